//! What stock serving clients send, against the real server on 127.0.0.1:0 with real
//! models: Triton's binary tensor data extension, requested outputs, model config,
//! repository index and statistics, KServe V1, `/health`, and `/metrics` as promtool
//! reads it. Bad binary bodies are part of the protocol's normal traffic here.

mod common;

use common::http::HttpServer as Server;
use common::{floats, models, relative_error};
use perch_firmware::http::HttpLimits;
use perch_firmware::service::{InferenceService, ServiceLimits};
use perch_runtime::engine::{read_npy, DType, Golden, LoadOptions, Model};
use perch_runtime::wire::{ModelId, Version};
use serde_json::{json, Value};

/// A response: status, `Inference-Header-Content-Length` if any, body.
struct Answer {
    status: u16,
    header_length: Option<usize>,
    body: Vec<u8>,
}

impl Answer {
    /// The JSON part of the body.
    fn json(&self) -> Value {
        let end = self.header_length.unwrap_or(self.body.len());
        serde_json::from_slice(&self.body[..end]).unwrap()
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// The servers and requests these tests make, with answers that keep the response
/// headers.
impl Server {
    fn start(model: &str) -> Server {
        Server::start_file(&models().join(model).join("model.onnx"), model)
    }

    fn start_file(path: &std::path::Path, model: &str) -> Server {
        let loaded = Model::load(path, &LoadOptions::new()).unwrap();
        let id = ModelId::new(model, Version::new(1, 0, 0)).unwrap();
        let service = InferenceService::new(loaded, id, ServiceLimits::default());
        Server::serve(service, HttpLimits::default())
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path);
        (status, serde_json::from_str(&text).unwrap())
    }

    /// POSTs `body`, with `Inference-Header-Content-Length: header_length` if given.
    fn post(&self, path: &str, body: &[u8], header_length: Option<&str>) -> Answer {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(length) = header_length {
            request = request.header("Inference-Header-Content-Length", length);
        }
        let mut response = request.send(body).unwrap();
        let header_length = response
            .headers()
            .get("inference-header-content-length")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        Answer {
            status: response.status().as_u16(),
            header_length,
            body: response.body_mut().read_to_vec().unwrap(),
        }
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// R1's golden input as tritonclient sends it by default: the JSON header, then the
/// raw little-endian floats.
fn triton_body(parameters: Value, outputs: Option<Value>) -> (Vec<u8>, String, Golden) {
    let golden = Golden::load(models().join("digits-mlp/golden")).unwrap();
    let data = le_bytes(&floats(golden.inputs[0].view()));
    let mut header = json!({
        "id": "t1",
        "inputs": [{"name": "pixels", "shape": golden.inputs[0].shape(), "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
        "parameters": parameters,
    });
    if let Some(outputs) = outputs {
        header["outputs"] = outputs;
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(&data);
    (body, length, golden)
}

#[test]
fn tritonclient_s_default_binary_request_gets_the_golden_output_as_binary_data() {
    let server = Server::start("digits-mlp");
    let (body, length, golden) = triton_body(json!({"binary_data_output": true}), None);
    let answer = server.post("/v2/models/digits-mlp/infer", &body, Some(&length));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let header_length = answer.header_length.expect("a binary response");
    let header = answer.json();
    assert_eq!(header["id"], "t1");
    let output = &header["outputs"][0];
    assert_eq!(output["name"], "probabilities");
    assert_eq!(output["shape"], json!([8, 10]));
    assert_eq!(output["parameters"]["binary_data_size"], 320);
    assert!(output.get("data").is_none(), "{output}");
    let got = from_le_bytes(&answer.body[header_length..]);
    assert!(relative_error(&got, &floats(golden.outputs[0].view())) <= 1e-4);

    // Binary in, JSON out (binary_data_output off): no header length in the answer.
    let (body, length, _) = triton_body(json!({}), None);
    let answer = server.post(
        "/v2/models/digits-mlp/versions/1.0.0/infer",
        &body,
        Some(&length),
    );
    assert_eq!((answer.status, answer.header_length), (200, None));
    let got: Vec<f32> =
        serde_json::from_value(answer.json()["outputs"][0]["data"].clone()).unwrap();
    assert!(relative_error(&got, &floats(golden.outputs[0].view())) <= 1e-4);
    assert_eq!(server.service.totals().ok, 2);
}

#[test]
fn requested_outputs_come_back_in_the_form_asked_and_an_unknown_one_is_refused() {
    let server = Server::start("digits-mlp");
    let json_output = json!([{"name": "probabilities", "parameters": {"binary_data": false}}]);
    let (body, length, _) = triton_body(json!({"binary_data_output": true}), Some(json_output));
    let answer = server.post("/v2/models/digits-mlp/infer", &body, Some(&length));
    assert_eq!((answer.status, answer.header_length), (200, None));
    assert_eq!(
        answer.json()["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .len(),
        80
    );

    let binary_output = json!([{"name": "probabilities", "parameters": {"binary_data": true}}]);
    let (body, length, _) = triton_body(json!({}), Some(binary_output));
    let answer = server.post("/v2/models/digits-mlp/infer", &body, Some(&length));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len() - answer.header_length.unwrap(), 320);

    let unknown = json!([{"name": "probabilities"}, {"name": "logits"}]);
    let (body, length, _) = triton_body(json!({}), Some(unknown));
    let answer = server.post("/v2/models/digits-mlp/infer", &body, Some(&length));
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.error(),
        "unknown output \"logits\"; the model's outputs are \"probabilities\""
    );
    assert_eq!(
        server.service.statistics().execution_count,
        2,
        "refused before running"
    );
}

/// The quantized fixture has twelve outputs, integer and float: the ones asked for come
/// back in the order asked, each in the form asked, with the engine's own values.
#[test]
fn integer_and_float_outputs_of_a_many_output_model_come_back_as_asked() {
    let path = models().join("fixtures/qlinear-contrib.onnx");
    let server = Server::start_file(&path, "qlinear");
    let model = Model::load(&path, &LoadOptions::new()).unwrap();
    let input = read_npy(models().join("fixtures/qlinear-contrib.input_0.npy")).unwrap();
    let outputs = model.run(&[input.input().unwrap()]).unwrap();
    let infos = &model.metadata().outputs;
    let integer = infos
        .iter()
        .position(|i| matches!(i.dtype, DType::U8 | DType::I8))
        .expect("an integer output");
    let float = infos
        .iter()
        .position(|i| i.dtype == DType::F32)
        .expect("a float output");
    let (integer_name, float_name) = (&infos[integer].name, &infos[float].name);

    let data = le_bytes(&floats(input.view()));
    let mut body = serde_json::to_vec(&json!({
        "inputs": [{"name": model.metadata().inputs[0].name, "shape": input.shape(),
                    "datatype": "FP32", "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": float_name, "parameters": {"binary_data": false}},
                    {"name": integer_name, "parameters": {"binary_data": true}}],
    }))
    .unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(&data);
    let answer = server.post("/v2/models/qlinear/infer", &body, Some(&length));
    assert_eq!(answer.status, 200, "{}", answer.error());
    let header = answer.json();
    let names: Vec<&str> = header["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [float_name.as_str(), integer_name.as_str()]);
    let datatype = if infos[integer].dtype == DType::U8 {
        "UINT8"
    } else {
        "INT8"
    };
    assert_eq!(header["outputs"][1]["datatype"], datatype);
    let want = outputs.view(integer).unwrap().to_le_bytes();
    assert_eq!(&answer.body[answer.header_length.unwrap()..], &want[..]);
    let got: Vec<f32> = serde_json::from_value(header["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(got, floats(outputs.view(float).unwrap()));
}

#[test]
fn every_malformed_binary_body_gets_a_400_naming_the_problem_and_the_server_keeps_serving() {
    let server = Server::start("digits-mlp");
    let infer = "/v2/models/digits-mlp/infer";
    let (good, length, _) = triton_body(json!({}), None);
    let json_length: usize = length.parse().unwrap();
    let header = |size: &str, shape: &str| {
        format!(
            r#"{{"inputs":[{{"name":"pixels","shape":{shape},"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
        )
        .into_bytes()
    };
    let with_tail = |mut header: Vec<u8>, tail: usize| {
        let length = header.len().to_string();
        header.extend(std::iter::repeat_n(0u8, tail));
        (header, length)
    };
    let (short, short_length) = with_tail(header("256", "[1,64]"), 100);
    let (mismatch, mismatch_length) = with_tail(header("128", "[1,64]"), 128);
    let (extra, extra_length) = with_tail(header("256", "[1,64]"), 260);
    let (huge, huge_length) = with_tail(header("18446744073709551615", "[1,64]"), 256);
    let (overflow, overflow_length) = with_tail(header("256", "[4611686018427387904,64]"), 256);
    let over_body = (good.len() + 1).to_string();
    let over_reason = format!(
        "Inference-Header-Content-Length is {over_body} but the body is only {} bytes",
        good.len()
    );
    let cases: Vec<(Vec<u8>, String, &str)> = vec![
        (
            good.clone(),
            "12abc".into(),
            "Inference-Header-Content-Length is \"12abc\", not a byte count",
        ),
        (good.clone(), over_body, &over_reason),
        (
            good.clone(),
            "0".into(),
            "malformed JSON: EOF while parsing",
        ),
        (
            good.clone(),
            (json_length - 3).to_string(),
            "malformed JSON",
        ),
        (
            short,
            short_length,
            "declares binary_data_size 256 at offset 0 of the binary data, but only 100 \
             bytes follow",
        ),
        (
            mismatch,
            mismatch_length,
            "input \"pixels\" is FP32 of shape [1, 64], which is not the 128 bytes of its \
             binary_data_size",
        ),
        (
            extra,
            extra_length,
            "4 bytes of binary data follow the 256 the inputs declare",
        ),
        (
            huge,
            huge_length,
            "declares binary_data_size 18446744073709551615",
        ),
        (
            overflow,
            overflow_length,
            "shape [4611686018427387904, 64], which is not the 256 bytes",
        ),
        (
            good[..json_length].to_vec(),
            length.clone(),
            "declares binary_data_size 2048 at offset 0 of the binary data, but only 0 bytes \
             follow",
        ),
    ];
    for (i, (body, length, reason)) in cases.iter().enumerate() {
        let answer = server.post(infer, body, Some(length));
        assert_eq!(answer.status, 400, "case {i}: {}", answer.error());
        assert!(
            answer.error().contains(reason),
            "case {i}: {}",
            answer.error()
        );
        assert_eq!(answer.header_length, None);
    }
    let answer = server.post(infer, &good, Some(&length));
    assert_eq!(answer.status, 200, "still serving: {}", answer.error());
    let stats = server.service.statistics();
    assert_eq!(
        (stats.success.count, stats.fail.count),
        (1, cases.len() as u64)
    );
    assert_eq!(
        server.metric("prediction_total{model_name=\"digits-mlp\",status=\"error\"}"),
        cases.len() as f64
    );
}

#[test]
fn the_config_describes_batched_and_fixed_models_as_triton_does() {
    let digits = Server::start("digits-mlp");
    let (status, config) = digits.get_json("/v2/models/digits-mlp/config");
    assert_eq!(status, 200);
    assert_eq!(
        (config["name"].clone(), config["platform"].clone()),
        (json!("digits-mlp"), json!("perch-tract"))
    );
    assert_eq!(config["max_batch_size"], (1 << 20) / 64);
    assert_eq!(
        config["input"],
        json!([{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}])
    );
    assert_eq!(
        config["output"],
        json!([{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}])
    );
    assert_eq!(
        digits.get("/v2/models/digits-mlp/versions/1.0.0/config").0,
        200
    );
    let (status, text) = digits.get("/v2/models/digits-mlp/versions/3.0.0/config");
    assert_eq!(status, 404);
    assert!(
        text.contains("has no version 3.0.0; version 1.0.0 is served"),
        "{text}"
    );
    assert_eq!(digits.get("/v2/models/kws-dscnn/config").0, 404);

    let kws = Server::start("kws-dscnn");
    let (_, config) = kws.get_json("/v2/models/kws-dscnn/config");
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(config["input"][0]["dims"], json!([1, 1, 49, 10]));
}

#[test]
fn the_repository_index_and_statistics_agree_with_the_requests_and_with_metrics() {
    let server = Server::start("digits-mlp");
    let index = server
        .agent
        .post(format!("{}/v2/repository/index", server.base))
        .send(&b""[..])
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let mut index = serde_json::from_str::<Value>(&index).unwrap();
    // A loaded model's entry also gives its memory estimate (and, loaded through the
    // repository, the resident memory its load took).
    let estimate = index[0]
        .as_object_mut()
        .and_then(|m| m.remove("estimated_bytes"));
    assert!(
        estimate
            .as_ref()
            .and_then(Value::as_u64)
            .is_some_and(|b| b > 0),
        "{estimate:?}"
    );
    assert_eq!(
        index,
        json!([{"name": "digits-mlp", "version": "1.0.0", "state": "READY"}])
    );
    let (body, length, _) = triton_body(json!({"binary_data_output": true}), None);
    for _ in 0..2 {
        assert_eq!(
            server
                .post("/v2/models/digits-mlp/infer", &body, Some(&length))
                .status,
            200
        );
    }
    assert_eq!(
        server
            .post("/v2/models/digits-mlp/infer", b"{", None)
            .status,
        400
    );

    for path in [
        "/v2/models/stats",
        "/v2/models/digits-mlp/stats",
        "/v2/models/digits-mlp/versions/1.0.0/stats",
    ] {
        let (status, stats) = server.get_json(path);
        assert_eq!(status, 200, "{path}");
        let model = &stats["model_stats"][0];
        assert_eq!(
            (model["name"].clone(), model["version"].clone()),
            (json!("digits-mlp"), json!("1.0.0"))
        );
        assert_eq!(model["inference_count"], 16, "two batches of 8");
        assert_eq!(model["execution_count"], 2);
        assert!(model["last_inference"].as_u64().unwrap() > 0);
        let s = &model["inference_stats"];
        assert_eq!(
            (s["success"]["count"].clone(), s["fail"]["count"].clone()),
            (json!(2), json!(1))
        );
        assert_eq!(s["queue"]["count"], 3, "every request waited for a slot");
        for phase in ["compute_input", "compute_infer", "compute_output"] {
            assert_eq!(s[phase]["count"], 2, "{phase}");
            assert!(s[phase]["ns"].as_u64().unwrap() > 0, "{phase}");
        }
    }
    assert_eq!(
        server.metric("prediction_total{model_name=\"digits-mlp\",status=\"ok\"}"),
        2.0
    );
    assert_eq!(
        server.metric("prediction_total{model_name=\"digits-mlp\",status=\"error\"}"),
        1.0
    );
    assert_eq!(server.get("/v2/models/other/stats").0, 404);
    assert_eq!(server.get("/v2/models/digits-mlp/versions/2/stats").0, 404);

    server.service.set_ready(false);
    let index = server
        .agent
        .post(format!("{}/v2/repository/index", server.base))
        .send(&b"{\"ready\": false}"[..])
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(index.contains("\"state\":\"UNAVAILABLE\""), "{index}");
}

#[test]
fn kserve_v1_predicts_rows_and_named_objects_and_refuses_uneven_rows() {
    let server = Server::start("digits-mlp");
    let golden = Golden::load(models().join("digits-mlp/golden")).unwrap();
    let pixels = floats(golden.inputs[0].view());
    let want = floats(golden.outputs[0].view());
    let rows: Vec<&[f32]> = pixels.chunks(64).collect();
    let named: Vec<Value> = rows.iter().map(|r| json!({"pixels": r})).collect();
    for instances in [json!(rows), json!(named)] {
        let body = serde_json::to_vec(&json!({ "instances": instances })).unwrap();
        let answer = server.post("/v1/models/digits-mlp:predict", &body, None);
        assert_eq!(answer.status, 200, "{}", answer.error());
        let predictions = answer.json()["predictions"].clone();
        let got: Vec<Vec<f32>> = serde_json::from_value(predictions).unwrap();
        assert_eq!(got.len(), 8);
        assert!(relative_error(&got.concat(), &want) <= 1e-4);
    }
    let uneven = json!({"instances": [rows[0], &rows[1][..63]]});
    let answer = server.post(
        "/v1/models/digits-mlp:predict",
        &serde_json::to_vec(&uneven).unwrap(),
        None,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.error(),
        "instance 1 has 63 values for input \"pixels\", which takes 64 per instance"
    );
    let answer = server.post(
        "/v1/models/digits-mlp:predict",
        br#"{"instances": [{"age": 3}]}"#,
        None,
    );
    assert_eq!(answer.status, 400);
    assert!(
        answer.error().contains("unknown input \"age\""),
        "{}",
        answer.error()
    );
    assert_eq!(
        server.post("/v1/models/kws:predict", b"{}", None).status,
        404
    );
    assert_eq!(
        server
            .post("/v1/models/digits-mlp:explain", b"{}", None)
            .status,
        404
    );
    assert_eq!(
        server.get_json("/v1/models/digits-mlp"),
        (200, json!({"name": "digits-mlp", "ready": true}))
    );
    assert_eq!(
        server.service.totals().errors,
        3,
        "the unknown model counts too"
    );

    // An unbatched model runs once per instance.
    let kws = Server::start("kws-dscnn");
    let golden = Golden::load(models().join("kws-dscnn/golden")).unwrap();
    let body =
        json!({"instances": [floats(golden.inputs[0].view()), floats(golden.inputs[0].view())]});
    let answer = kws.post(
        "/v1/models/kws-dscnn:predict",
        &serde_json::to_vec(&body).unwrap(),
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.error());
    let got: Vec<Vec<f32>> = serde_json::from_value(answer.json()["predictions"].clone()).unwrap();
    assert_eq!(got.len(), 2);
    assert!(relative_error(&got[1], &floats(golden.outputs[0].view())) <= 1e-4);
}

#[test]
fn health_lists_the_served_model_and_follows_readiness() {
    let server = Server::start("digits-mlp");
    let model = json!({"name": "digits-mlp", "version": "1.0.0", "ready": true});
    assert_eq!(
        server.get_json("/health"),
        (200, json!({"status": "ok", "models": [model]}))
    );
    server.service.set_ready(false);
    let (status, health) = server.get_json("/health");
    assert_eq!(
        (status, health["status"].clone()),
        (503, json!("not ready"))
    );
    assert_eq!(health["models"][0]["ready"], false);
}

/// What `promtool check metrics` insists on: every family has HELP and TYPE, and
/// counters end in `_total`.
#[test]
fn every_metric_family_has_help_and_type_and_counters_end_in_total() {
    let server = Server::start("digits-mlp");
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let mut helped = Vec::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.trim().is_empty(), "{line}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            typed.push(name.to_string());
        }
    }
    assert_eq!(helped, typed);
    for family in [
        "prediction_latency_seconds",
        "prediction_total",
        "perch_model_ready",
        "perch_uptime_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(typed.iter().any(|t| t == family), "{family} in\n{text}");
    }
}
