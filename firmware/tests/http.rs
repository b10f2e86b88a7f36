//! The Open Inference Protocol server on 127.0.0.1:0, in-process, with real models and
//! a real HTTP client.

mod common;

use std::path::Path;
use std::time::Duration;

use common::http::HttpServer as Server;
use common::{floats, models, relative_error};
use perch_firmware::http::{HttpLimits, POSTCARD_CONTENT_TYPE};
use perch_firmware::service::{
    binary, InferRequest, InferenceService, RequestTensor, ServiceLimits, TensorValues,
};
use perch_runtime::engine::{Golden, LoadOptions, Model};
use perch_runtime::wire::{ModelId, Version};
use serde_json::{json, Value};

/// The requests these tests make.
impl Server {
    fn start(model: &str, limits: ServiceLimits) -> Server {
        Server::start_with(model, limits, HttpLimits::default())
    }

    fn start_with(model: &str, limits: ServiceLimits, http: HttpLimits) -> Server {
        let loaded =
            Model::load(models().join(model).join("model.onnx"), &LoadOptions::new()).unwrap();
        let id = ModelId::new(model, Version::new(1, 0, 0)).unwrap();
        Server::serve(InferenceService::new(loaded, id, limits), http)
    }

    fn post_bytes(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        (status, body)
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let (status, body) = self.post_bytes(path, "application/json", body);
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn errors(&self) -> f64 {
        let model = self.service.model_id().name.to_string();
        self.metric(&format!(
            "prediction_total{{model_name=\"{model}\",status=\"error\"}}"
        ))
    }

    fn oks(&self) -> f64 {
        let model = self.service.model_id().name.to_string();
        self.metric(&format!(
            "prediction_total{{model_name=\"{model}\",status=\"ok\"}}"
        ))
    }
}

/// The golden input as an OIP JSON body, and the golden output's shape and values.
fn golden(model: &str, input: &str) -> (Vec<u8>, Vec<usize>, Vec<f32>) {
    let golden = Golden::load(models().join(model).join("golden")).unwrap();
    let body = json!({
        "id": "golden",
        "inputs": [{
            "name": input,
            "shape": golden.inputs[0].shape(),
            "datatype": "FP32",
            "data": floats(golden.inputs[0].view()),
        }]
    });
    (
        serde_json::to_vec(&body).unwrap(),
        golden.outputs[0].shape().to_vec(),
        floats(golden.outputs[0].view()),
    )
}

fn assert_golden(response: &Value, shape: &[usize], want: &[f32]) {
    let output = &response["outputs"][0];
    assert_eq!(output["datatype"], "FP32");
    assert_eq!(output["shape"], json!(shape));
    let got: Vec<f32> = serde_json::from_value(output["data"].clone()).unwrap();
    let error = relative_error(&got, want);
    assert!(error <= 1e-4, "relative error {error}");
}

#[test]
fn the_keyword_spotter_answers_its_golden_input_with_its_golden_output() {
    let server = Server::start("kws-dscnn", ServiceLimits::default());
    let (body, shape, want) = golden("kws-dscnn", "mfcc");
    let (status, response) = server.post("/v2/models/kws-dscnn/infer", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["id"], "golden");
    assert_eq!(response["model_name"], "kws-dscnn");
    assert_eq!(response["model_version"], "1.0.0");
    assert_eq!(response["outputs"][0]["name"], "logits");
    assert_golden(&response, &shape, &want);

    let (status, response) = server.post("/v2/models/kws-dscnn/versions/1.0.0/infer", &body);
    assert_eq!(status, 200, "{response}");
    assert_golden(&response, &shape, &want);
    assert_eq!(server.oks(), 2.0);
    assert_eq!(
        server.metric("prediction_latency_seconds_count{model_name=\"kws-dscnn\"}"),
        2.0
    );
    server.shutdown().unwrap();
}

#[test]
fn a_batch_of_digits_comes_back_one_row_per_image() {
    let server = Server::start("digits-mlp", ServiceLimits::default());
    let (body, shape, want) = golden("digits-mlp", "pixels");
    assert_eq!(shape, [8, 10]);
    let (status, response) = server.post("/v2/models/digits-mlp/infer", &body);
    assert_eq!(status, 200, "{response}");
    assert_golden(&response, &shape, &want);
}

#[test]
fn a_postcard_body_is_answered_in_postcard_with_the_same_outputs() {
    let server = Server::start("digits-mlp", ServiceLimits::default());
    let golden = Golden::load(models().join("digits-mlp/golden")).unwrap();
    let request = InferRequest {
        id: Some("bin".into()),
        inputs: vec![RequestTensor {
            name: "pixels".into(),
            shape: golden.inputs[0].shape().to_vec(),
            data: TensorValues::F32(floats(golden.inputs[0].view())),
        }],
    };
    let (status, body) = server.post_bytes(
        "/v2/models/digits-mlp/infer",
        POSTCARD_CONTENT_TYPE,
        &binary::encode_request(&request),
    );
    assert_eq!(status, 200);
    let binary::BinaryReply::Ok(response) = binary::decode_reply(&body).unwrap() else {
        panic!("an error reply")
    };
    assert_eq!(response.id.as_deref(), Some("bin"));
    let TensorValues::F32(got) = &response.outputs[0].data else {
        panic!("not f32")
    };
    assert!(relative_error(got, &floats(golden.outputs[0].view())) <= 1e-4);

    let (status, body) = server.post_bytes(
        "/v2/models/digits-mlp/infer",
        POSTCARD_CONTENT_TYPE,
        &[1, 0xff],
    );
    assert_eq!(status, 400);
    let binary::BinaryReply::Error { id, status, reason } = binary::decode_reply(&body).unwrap()
    else {
        panic!("not an error reply")
    };
    assert_eq!((id, status), (None, 400));
    assert!(reason.contains("does not decode"), "{reason}");
}

fn kws_body(name: &str, datatype: &str, shape: &str, data: &str) -> Vec<u8> {
    format!(
        r#"{{"inputs":[{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
    )
    .into_bytes()
}

fn values(n: usize, value: &str) -> String {
    format!("[{}]", vec![value; n].join(","))
}

#[test]
fn every_bad_request_gets_its_status_and_reason_is_counted_and_the_server_keeps_answering() {
    let limits = ServiceLimits {
        max_payload_bytes: 64 << 10,
        max_batch_elements: 4096,
        ..ServiceLimits::DEFAULT
    };
    let server = Server::start("kws-dscnn", limits);
    let infer = "/v2/models/kws-dscnn/infer";
    let mut nan = vec!["0.5"; 490];
    nan[7] = "\"NaN\"";
    let nan = format!("[{}]", nan.join(","));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (infer, b"{\"inputs\": [{".to_vec(), 400, "malformed JSON"),
        (
            infer,
            kws_body("mfcc", "FP32", "[1,49,10]", &values(490, "0")),
            400,
            "input \"mfcc\" must have shape [1,1,49,10], got [1, 49, 10]",
        ),
        (
            infer,
            kws_body("mfcc", "INT64", "[1,1,49,10]", &values(490, "0")),
            400,
            "input \"mfcc\" must be FP32, got INT64",
        ),
        (
            infer,
            kws_body("mfcc", "FP32", "[1,1,49,10]", &values(491, "0")),
            400,
            "(490 elements) but 491 values",
        ),
        (
            infer,
            kws_body("audio", "FP32", "[1,1,49,10]", &values(490, "0")),
            400,
            "unknown input \"audio\"",
        ),
        (
            infer,
            kws_body("mfcc", "FP32", "[1,1,49,10]", &nan),
            400,
            "element 7 is NaN; non-finite inputs are rejected",
        ),
        (
            "/v2/models/mobilenet/infer",
            kws_body("mfcc", "FP32", "[1,1,49,10]", &values(490, "0")),
            404,
            "no model named \"mobilenet\" is served here",
        ),
        (
            "/v2/models/kws-dscnn/versions/2.0.0/infer",
            kws_body("mfcc", "FP32", "[1,1,49,10]", &values(490, "0")),
            404,
            "model \"kws-dscnn\" has no version 2.0.0; version 1.0.0 is served",
        ),
        (
            infer,
            kws_body("mfcc", "FP32", "[1,1,49,10]", &values(5000, "0")),
            413,
            "5000 tensor elements, over the limit of 4096",
        ),
        (
            infer,
            kws_body("mfcc", "FP32", "[1,1,49,10]", &values(20_000, "0.25")),
            413,
            "over the limit of 65536 bytes",
        ),
    ];
    for (i, (path, body, status, reason)) in cases.iter().enumerate() {
        let (got, response) = server.post(path, body);
        let error = response["error"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "case {i}: {response}");
        assert!(error.contains(reason), "case {i}: {error}");
        assert_eq!(server.errors(), (i + 1) as f64, "case {i}");
    }
    let (body, shape, want) = golden("kws-dscnn", "mfcc");
    let (status, response) = server.post(infer, &body);
    assert_eq!(status, 200, "{response}");
    assert_golden(&response, &shape, &want);
    assert_eq!(server.oks(), 1.0);
    assert_eq!(server.errors(), cases.len() as f64);
}

#[test]
fn health_readiness_and_metadata_describe_the_served_model() {
    let server = Server::start("digits-mlp", ServiceLimits::default());
    assert_eq!(
        server.get("/v2/health/live"),
        (200, r#"{"live":true}"#.into())
    );
    assert_eq!(
        server.get("/v2/health/ready"),
        (200, r#"{"ready":true}"#.into())
    );
    assert_eq!(
        server.get("/v2/models/digits-mlp/ready"),
        (200, r#"{"ready":true}"#.into())
    );

    let (status, text) = server.get("/v2");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["name"], "perchd");

    for path in [
        "/v2/models/digits-mlp",
        "/v2/models/digits-mlp/versions/1.0.0",
    ] {
        let (status, text) = server.get(path);
        assert_eq!(status, 200, "{path}");
        let meta: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            meta,
            json!({
                "name": "digits-mlp", "versions": ["1.0.0"], "platform": "perch-tract",
                "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            })
        );
    }
    let (status, text) = server.get("/v2/models/kws");
    assert_eq!(status, 404);
    assert!(text.contains("no model named \\\"kws\\\""), "{text}");
    assert_eq!(server.get("/v2/models/digits-mlp/versions/9.9.9").0, 404);
    assert_eq!(server.get("/v2/models/kws/ready").0, 404);
    assert_eq!(server.get("/v3/models").0, 404);

    server.service.set_ready(false);
    assert_eq!(
        server.get("/v2/health/ready"),
        (503, r#"{"ready":false}"#.into())
    );
    assert_eq!(server.get("/v2/models/digits-mlp/ready").0, 503);
    assert_eq!(server.get("/v2/health/live").0, 200);
    let (body, _, _) = golden("digits-mlp", "pixels");
    let (status, response) = server.post("/v2/models/digits-mlp/infer", &body);
    assert_eq!(
        (status, &response["error"]),
        (503, &json!("the model is not ready"))
    );
    assert_eq!(
        server.metric("perch_model_ready{model_name=\"digits-mlp\"}"),
        0.0
    );
    assert_eq!(server.errors(), 1.0);

    server.service.set_ready(true);
    assert_eq!(server.post("/v2/models/digits-mlp/infer", &body).0, 200);
    assert_eq!(
        server.metric("perch_model_ready{model_name=\"digits-mlp\"}"),
        1.0
    );
}

#[test]
fn concurrent_requests_from_several_threads_all_succeed_and_the_counters_add_up() {
    let server = Server::start("kws-dscnn", ServiceLimits::default());
    let (body, shape, want) = golden("kws-dscnn", "mfcc");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..20 {
                    let (status, response) = server.post("/v2/models/kws-dscnn/infer", &body);
                    assert_eq!(status, 200, "{response}");
                    assert_golden(&response, &shape, &want);
                }
                let (status, _) = server.post("/v2/models/kws-dscnn/infer", b"[");
                assert_eq!(status, 400);
            });
        }
    });
    assert_eq!(server.oks(), 80.0);
    assert_eq!(server.errors(), 4.0);
    assert_eq!(
        server.metric("prediction_latency_seconds_count{model_name=\"kws-dscnn\"}"),
        80.0
    );
}

#[test]
fn shutdown_lets_serve_return_and_the_port_closes() {
    let server = Server::start("digits-mlp", ServiceLimits::default());
    assert_eq!(server.get("/v2/health/live").0, 200);
    let address = server.base.trim_start_matches("http://").to_string();
    server.shutdown().unwrap();
    assert!(std::net::TcpStream::connect(address).is_err());
}

#[test]
fn a_body_far_over_the_limit_is_refused_with_413_and_counted() {
    let limits = ServiceLimits {
        max_payload_bytes: 64 << 10,
        ..ServiceLimits::default()
    };
    let server = Server::start("kws-dscnn", limits);
    let body = kws_body("mfcc", "FP32", "[1,1,49,10]", &values(1 << 20, "0.125"));
    assert!(body.len() > 6 << 20);
    let (status, response) = server.post("/v2/models/kws-dscnn/infer", &body);
    assert_eq!(status, 413, "{response}");
    assert_eq!(
        response["error"],
        format!(
            "the request is {} bytes, over the limit of 65536 bytes",
            body.len()
        )
    );
    assert_eq!(server.errors(), 1.0);
    assert_eq!(server.get("/v2/health/live").0, 200);
}

#[test]
fn a_declared_length_far_over_the_limit_is_refused_before_the_body_is_sent() {
    use std::io::{Read, Write};
    let server = Server::start("kws-dscnn", ServiceLimits::default());
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v2/models/kws-dscnn/infer HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.ends_with(
            r#"{"error":"the request is 1000000000 bytes, over the limit of 4194304 bytes"}"#
        ),
        "{answer}"
    );
    assert_eq!(server.errors(), 1.0);
}

/// The example request the README and docs/protocol.md send with curl and
/// mosquitto_pub is R2's golden input, and gets R2's golden output.
#[test]
fn the_documented_example_request_gets_the_golden_output() {
    let server = Server::start("kws-dscnn", ServiceLimits::default());
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/kws-request.json"),
    )
    .unwrap();
    let (status, reply) = server.post("/v2/models/kws-dscnn/infer", &body);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["id"], "kws-golden");
    let got: Vec<f32> = reply["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let golden = Golden::load(models().join("kws-dscnn/golden")).unwrap();
    assert!(relative_error(&got, &floats(golden.outputs[0].view())) <= 1e-4);
    server.shutdown().unwrap();
}

mod connection_limits {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(500),
            body_timeout: Duration::from_millis(500),
        }
    }

    fn address(server: &Server) -> String {
        server.base.trim_start_matches("http://").to_string()
    }

    /// Reads until the server closes the connection (or 10 s pass); what it sent.
    fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
        let started = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        (got, started.elapsed())
    }

    /// Issue 15: connections that say nothing used to be held forever, until the
    /// agent ran out of file descriptors (and its spool and updates with it).
    #[test]
    fn silent_connections_are_closed_after_the_header_timeout_and_extra_ones_at_once() {
        let server = Server::start_with("kws-dscnn", ServiceLimits::DEFAULT, limits());
        let addr = address(&server);
        let mut silent: Vec<TcpStream> =
            (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        // The fifth is over the cap: closed as soon as it is accepted.
        let mut extra = TcpStream::connect(&addr).unwrap();
        let (got, took) = until_closed(&mut extra);
        assert!(
            got.is_empty() && took < Duration::from_millis(400),
            "{got:?} after {took:?}"
        );
        // The four silent ones are closed at the header timeout.
        for stream in &mut silent {
            let (_, took) = until_closed(stream);
            assert!(took < Duration::from_secs(5), "held for {took:?}");
        }
        // Their slots are free again.
        let (status, _) = server.get("/v2/health/live");
        assert_eq!(status, 200);
    }

    #[test]
    fn a_body_that_trickles_in_is_answered_408_at_the_body_timeout() {
        let server = Server::start_with("kws-dscnn", ServiceLimits::DEFAULT, limits());
        let mut stream = TcpStream::connect(address(&server)).unwrap();
        stream
            .write_all(
                b"POST /v2/models/kws-dscnn/infer HTTP/1.1\r\nHost: x\r\n\
                  Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"",
            )
            .unwrap();
        let (got, took) = until_closed(&mut stream);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("did not arrive within 500 ms"), "{text}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(server.service.totals().errors, 1);
    }
}
