//! Several models behind one HTTP server, in-process on 127.0.0.1:0 with real models
//! and a real client: requests by name, the repository extension's index, load and
//! unload (with a request in flight), the memory budget, and bundles that fail
//! verification.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::HttpServer as Server;
use common::{floats, models, reference_bundle, relative_error};
use perch_firmware::config::ModelConfig;
use perch_firmware::http::HttpLimits;
use perch_firmware::repository::Repository;
use perch_firmware::service::{InferenceService, ServiceLimits};
use perch_runtime::bundle;
use perch_runtime::engine::{Golden, LoadOptions, Model};
use perch_runtime::wire::{ModelId, Version};
use perch_testkit::promtool_check_metrics;
use serde_json::{json, Value};

/// The requests these tests make.
impl Server {
    /// R1 (digits-mlp) as the primary model, `extra` configured (not loaded), and a
    /// memory budget.
    fn primary_and(extra: &[&str], budget: Option<u64>, keys: Vec<PathBuf>) -> Server {
        let path = models().join("digits-mlp/model.onnx");
        let model = Model::load(&path, &LoadOptions::new()).unwrap();
        let id = ModelId::new("digits-mlp", Version::new(1, 0, 0)).unwrap();
        let service = InferenceService::new(model, id, ServiceLimits::DEFAULT);
        let size = std::fs::metadata(&path).unwrap().len();
        let repository = Repository::new(service, size, budget, keys);
        for name in extra {
            let mut config = ModelConfig::new(models().join(name).join("model.onnx"));
            config.name = Some(name.to_string());
            config.warmup_runs = 1;
            repository.configure(config).unwrap();
        }
        Server::serve_models(2, repository, HttpLimits::default())
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }

    fn load(&self, name: &str, body: &[u8]) -> (u16, Value) {
        self.post(&format!("/v2/repository/models/{name}/load"), body)
    }

    fn unload(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/v2/repository/models/{name}/unload"), b"")
    }

    /// `(name, state, reason)` of every model in the index.
    fn index(&self) -> Vec<(String, String, String)> {
        let (status, index) = self.post("/v2/repository/index", b"{}");
        assert_eq!(status, 200);
        index
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (text("name"), text("state"), text("reason"))
            })
            .collect()
    }

    /// Infers the model's golden input by name and checks the golden output.
    fn assert_golden(&self, model: &str, input: &str) {
        self.assert_golden_of(model, model, input);
    }

    /// [`assert_golden`](Self::assert_golden) of the model in `models/{folder}`,
    /// served as `model`.
    fn assert_golden_of(&self, model: &str, folder: &str, input: &str) {
        let golden = Golden::load(models().join(folder).join("golden")).unwrap();
        let body = json!({"inputs": [{
            "name": input,
            "shape": golden.inputs[0].shape(),
            "datatype": "FP32",
            "data": floats(golden.inputs[0].view()),
        }]});
        let (status, response) = self.post(
            &format!("/v2/models/{model}/infer"),
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{model}: {response}");
        assert_eq!(response["model_name"], model);
        let got: Vec<f32> = serde_json::from_value(response["outputs"][0]["data"].clone()).unwrap();
        let error = relative_error(&got, &floats(golden.outputs[0].view()));
        assert!(error <= 1e-4, "{model}: relative error {error}");
    }

    fn infer_status(&self, model: &str) -> (u16, String) {
        let (status, body) = self.post(&format!("/v2/models/{model}/infer"), br#"{"inputs": []}"#);
        (status, body["error"].as_str().unwrap_or("").to_string())
    }
}

fn entry(name: &str, state: &str, reason: &str) -> (String, String, String) {
    (name.into(), state.into(), reason.into())
}

#[test]
fn two_models_answer_under_their_names_and_every_listing_names_both() {
    let server = Server::primary_and(&["kws-dscnn", "iris-mlp"], None, Vec::new());
    assert_eq!(server.load("kws-dscnn", b"").0, 200);
    assert_eq!(server.load("iris-mlp", b"").0, 200);
    server.assert_golden("digits-mlp", "pixels");
    server.assert_golden("kws-dscnn", "mfcc");
    server.assert_golden("kws-dscnn", "mfcc");

    // `/predict` takes the primary model, or the one `?model=` names.
    let features = br#"{"features": {"sepal_length": 6.3, "sepal_width": 3.4, "petal_length": 5.6, "petal_width": 2.4}}"#;
    let (status, answer) = server.post("/predict?model=iris-mlp", features);
    assert_eq!((status, &answer["prediction"]), (200, &json!("virginica")));
    let (status, answer) = server.post("/predict", features);
    assert_eq!(status, 400);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("\"digits-mlp\" has no feature schema"));
    assert_eq!(server.post("/predict?model=nope", features).0, 404);

    assert_eq!(
        server.index(),
        [
            entry("digits-mlp", "READY", ""),
            entry("kws-dscnn", "READY", ""),
            entry("iris-mlp", "READY", "")
        ]
    );
    let (status, health) = server.get("/health");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let names: Vec<&str> = health["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["digits-mlp", "kws-dscnn", "iris-mlp"]);
    let (_, v1) = server.get("/v1/models");
    assert_eq!(
        serde_json::from_str::<Value>(&v1).unwrap(),
        json!({"models": ["digits-mlp", "kws-dscnn", "iris-mlp"]})
    );
    let (_, stats) = server.get("/v2/models/stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["model_stats"].as_array().unwrap().len(), 3);
    let (_, stats) = server.get("/v2/models/kws-dscnn/stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        2
    );

    // Each model's own series; the error of `/predict` counts on the primary.
    let ok = |m: &str| {
        server.metric(&format!(
            "prediction_total{{model_name=\"{m}\",status=\"ok\"}}"
        ))
    };
    assert_eq!(
        (ok("digits-mlp"), ok("kws-dscnn"), ok("iris-mlp")),
        (1.0, 2.0, 1.0)
    );
    assert_eq!(
        server.metric("prediction_latency_seconds_count{model_name=\"kws-dscnn\"}"),
        2.0
    );
    assert_eq!(
        server.metric("perch_model_ready{model_name=\"iris-mlp\"}"),
        1.0
    );
    assert!(server.metric("perch_models_memory_bytes") > 27_138.0 + 105_824.0);

    let test = "two_models_answer_under_their_names_and_every_listing_names_both";
    promtool_check_metrics(test, server.get("/metrics").1.as_bytes());
}

#[test]
fn a_model_loads_unloads_and_loads_again_and_bad_names_get_their_reasons() {
    let server = Server::primary_and(&["kws-dscnn"], None, Vec::new());
    assert_eq!(
        server.index(),
        [
            entry("digits-mlp", "READY", ""),
            entry("kws-dscnn", "UNAVAILABLE", "not loaded")
        ]
    );
    assert_eq!(
        server.infer_status("kws-dscnn"),
        (404, "model \"kws-dscnn\" is not ready: not loaded".into())
    );

    assert_eq!(server.load("kws-dscnn", b"").0, 200);
    server.assert_golden("kws-dscnn", "mfcc");
    assert_eq!(server.get("/v2/models/kws-dscnn/ready").0, 200);
    assert_eq!(
        server.load("kws-dscnn", b"").0,
        200,
        "loaded already: nothing to do"
    );

    assert_eq!(server.unload("kws-dscnn").0, 200);
    assert_eq!(
        server.index()[1],
        entry("kws-dscnn", "UNAVAILABLE", "unloaded")
    );
    assert_eq!(
        server.infer_status("kws-dscnn"),
        (404, "model \"kws-dscnn\" is not ready: unloaded".into())
    );
    assert_eq!(server.get("/v2/models/kws-dscnn").0, 404);
    assert!(
        !server.get("/metrics").1.contains("kws-dscnn"),
        "gone from /metrics"
    );
    assert_eq!(server.unload("kws-dscnn").0, 200, "unloaded already");
    assert_eq!(server.load("kws-dscnn", b"").0, 200);
    server.assert_golden("kws-dscnn", "mfcc");

    let (status, body) = server.unload("digits-mlp");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("primary model"),
        "{body}"
    );
    let (status, body) = server.unload("nope");
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "no model named \"nope\" in the repository")
    );
    assert_eq!(server.load("nope", b"").0, 404);
    let (status, body) = server.load("kws-dscnn", b"{not json");
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("the load request's body: not JSON"));
    let (status, body) = server.post("/v2/models/kws-dscnn/versions/9/infer", b"{}");
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("has no version 9"),
        "{body}"
    );
    server.assert_golden("digits-mlp", "pixels");
}

/// A model that runs for a second or more (`perch_testkit::onnx::slow_matmul_chain`).
fn slow_service() -> InferenceService {
    let bytes = perch_testkit::onnx::slow_matmul_chain();
    let model = Model::from_onnx_bytes(&bytes, &LoadOptions::new()).unwrap();
    let id = ModelId::new("slow", Version::new(1, 0, 0)).unwrap();
    InferenceService::new(model, id, ServiceLimits::DEFAULT)
}

#[test]
fn an_unload_waits_for_the_request_in_flight_which_completes_and_new_ones_are_refused() {
    let server = Server::primary_and(&[], None, Vec::new());
    let models = server.repository.clone();
    models.insert(slow_service(), 4 << 20).unwrap();
    let body = json!({"inputs": [{"name": "x", "shape": [512, 1024], "datatype": "FP32",
        "data": vec![0.5f32; 512 * 1024]}]})
    .to_string();
    let (base, agent) = (server.base.clone(), server.agent.clone());
    let request = std::thread::spawn(move || {
        let mut response = agent
            .post(format!("{base}/v2/models/slow/infer"))
            .send(body.as_bytes())
            .unwrap();
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        (status, text, Instant::now())
    });
    // In flight: the repository, this check and the request hold the model.
    let deadline = Instant::now() + Duration::from_secs(30);
    while models.get("slow").map_or(0, |s| s.handles()) < 3 {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (base, agent) = (server.base.clone(), server.agent.clone());
    let started = Instant::now();
    let unload = std::thread::spawn(move || {
        let status = agent
            .post(format!("{base}/v2/repository/models/slow/unload"))
            .send(&b""[..])
            .unwrap()
            .status()
            .as_u16();
        (status, Instant::now())
    });
    // While the unload waits, the model is gone for new requests.
    while server
        .index()
        .iter()
        .any(|(n, s, _)| n == "slow" && s == "READY")
    {
        assert!(Instant::now() < deadline, "the model never left the index");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        server.infer_status("slow"),
        (404, "model \"slow\" is not ready: unloaded".into())
    );
    let (unload_status, unloaded_at) = unload.join().unwrap();
    let (status, text, answered_at) = request.join().unwrap();
    assert_eq!(unload_status, 200);
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    let response: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(response["outputs"][0]["shape"], json!([512, 1024]));
    // The unload answered after the inference ended: the request's answer (its run
    // done, then some megabytes of JSON to write and read) arrived soon after.
    assert!(
        answered_at <= unloaded_at + Duration::from_secs(1),
        "the unload answered {:?} before the request did",
        answered_at - unloaded_at
    );
    assert!(
        unloaded_at - started > Duration::from_millis(100),
        "the unload waited"
    );
    server.assert_golden("digits-mlp", "pixels");
}

#[test]
fn a_load_over_the_budget_is_refused_with_the_figures_and_the_other_model_keeps_answering() {
    let unbounded = Server::primary_and(&[], None, Vec::new());
    let in_use = unbounded.metric("perch_models_memory_bytes") as u64;
    drop(unbounded);
    let budget = in_use + 50_000; // R2's file alone is 105,824 bytes
    let server = Server::primary_and(&["kws-dscnn", "iris-mlp"], Some(budget), Vec::new());
    let (status, body) = server.load("kws-dscnn", b"");
    assert_eq!(status, 400);
    assert_eq!(
        body["error"],
        json!(format!(
            "model \"kws-dscnn\" needs about 105824 bytes, {in_use} bytes of the memory \
             budget of {budget} bytes are in use: unload a model or raise memory_budget"
        ))
    );
    server.assert_golden("digits-mlp", "pixels");
    let kws = &server.index()[1];
    assert_eq!(kws.1, "UNAVAILABLE");
    assert!(kws.2.contains("memory budget"), "{kws:?}");
    assert_eq!(server.metric("perch_memory_budget_bytes"), budget as f64);
    // A model that fits loads.
    assert_eq!(server.load("iris-mlp", b"").0, 200);
    assert!(server.metric("perch_models_memory_bytes") <= budget as f64);
}

/// R2 packed as a bundle named `kws`, signed with `key`.
fn kws_bundle(key: &bundle::SigningKey) -> Vec<u8> {
    let contents = reference_bundle("kws-dscnn", "kws", "1.2.3");
    bundle::pack(&contents, key).unwrap().as_bytes().to_vec()
}

fn path_body(path: &Path) -> Vec<u8> {
    json!({"parameters": {"path": path}})
        .to_string()
        .into_bytes()
}

#[test]
fn bundles_that_fail_verification_are_refused_with_the_reason_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let key = bundle::SigningKey::from_bytes(&[5; 32]);
    let public = dir.path().join("fleet.pub");
    std::fs::write(&public, bundle::verifying_key_file(&key.verifying_key())).unwrap();
    let server = Server::primary_and(&[], None, vec![public]);

    let good = kws_bundle(&key);
    let mut tampered = good.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0x01;
    let foreign = kws_bundle(&bundle::SigningKey::from_bytes(&[6; 32]));
    for (file, bytes) in [("tampered.perch", &tampered), ("foreign.perch", &foreign)] {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let (status, body) = server.load("kws", &path_body(&path));
        let reason = body["error"].as_str().unwrap();
        assert_eq!(status, 400, "{file}: {reason}");
        assert!(
            reason.starts_with(&format!(
                "cannot load model \"kws\": cannot load bundle {}: ",
                path.display()
            )),
            "{file}: {reason}"
        );
        server.assert_golden("digits-mlp", "pixels");
    }
    assert_eq!(server.index()[1].1, "UNAVAILABLE");
    let plain = models().join("kws-dscnn/model.onnx");
    let (status, body) = server.load("kws", &path_body(&plain));
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only a signed bundle"),
        "{body}"
    );
    let (status, _) = server.load("kws", br#"{"parameters": {"path": 7}}"#);
    assert_eq!(status, 400);

    let path = dir.path().join("kws.perch");
    std::fs::write(&path, &good).unwrap();
    assert_eq!(server.load("kws", &path_body(&path)).0, 200);
    server.assert_golden_of("kws", "kws-dscnn", "mfcc");
    assert_eq!(server.index()[1], entry("kws", "READY", ""));
}
