//! A/B experiments behind the HTTP server, in-process on 127.0.0.1:0 with real models
//! and a real client: requests routed by entity id to the variant the canary bucketing
//! picks, replies saying which variant served them, the experiment's figures on
//! `/v2/experiments/{name}` and `/metrics` (promtool), and shadow models that agree,
//! fail, or hang without touching the served answers.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::http::HttpServer as Server;
use common::{floats, models, relative_error};
use perch_firmware::config::ModelConfig;
use perch_firmware::experiment::{
    Agreement, EntitySource, ExperimentSpec, Experiments, ShadowSpec, VariantSpec,
};
use perch_firmware::http::HttpLimits;
use perch_firmware::repository::Repository;
use perch_firmware::service::{InferenceService, ServiceLimits};
use perch_runtime::canary::{bucket, Percent};
use perch_runtime::engine::{Golden, LoadOptions, Model};
use perch_runtime::wire::{ModelId, Version};
use perch_testkit::{promtool_check_metrics, wait_until};
use serde_json::{json, Value};

/// R1 (digits-mlp) as the primary model, and `extra` (name, model file, golden
/// variant) loaded beside it.
fn repository(extra: &[(&str, PathBuf, Option<&str>)]) -> Repository {
    let path = models().join("digits-mlp/model.onnx");
    let model = Model::load(&path, &LoadOptions::new()).unwrap();
    let id = ModelId::new("digits-mlp", Version::new(1, 0, 0)).unwrap();
    let service = InferenceService::new(model, id, ServiceLimits::DEFAULT);
    let repository = Repository::new(service, 0, None, Vec::new());
    for (name, file, variant) in extra {
        let mut config = ModelConfig::new(file);
        config.name = Some(name.to_string());
        config.variant = variant.map(str::to_string);
        config.warmup_runs = 1;
        repository.configure(config).unwrap();
        repository.load(name, None).unwrap();
    }
    repository
}

fn digits(file: &str) -> PathBuf {
    models().join("digits-mlp").join(file)
}

fn variant(name: &str, model: &str, percent: u8) -> VariantSpec {
    VariantSpec {
        name: name.into(),
        model: model.into(),
        share: Percent::from_whole(percent).unwrap(),
    }
}

/// `digits-ab`: `a` (digits-a, float) and `b` (digits-b, int8 weights) at 50 % each,
/// `a` the default, the entity id in the default header.
fn digits_ab(shadows: &[(&str, &str)]) -> ExperimentSpec {
    ExperimentSpec {
        name: "digits-ab".into(),
        variants: vec![variant("a", "digits-a", 50), variant("b", "digits-b", 50)],
        default: "a".into(),
        shadows: shadows
            .iter()
            .map(|(name, model)| ShadowSpec {
                name: name.to_string(),
                model: model.to_string(),
            })
            .collect(),
        entity: EntitySource::default(),
        agreement: Agreement::Argmax,
        primary: false,
    }
}

fn serve(repository: Repository, specs: Vec<ExperimentSpec>, queue: usize) -> Server {
    let names: Vec<String> = repository.index().into_iter().map(|e| e.name).collect();
    let experiments =
        Experiments::new(specs, |m: &str| names.iter().any(|n| n == m), queue).unwrap();
    Server::serve_experiments(2, repository, experiments, HttpLimits::default())
}

/// Row `i` of the digits golden input as an OIP body, and the golden output rows of
/// the float model and of the int8-weight one.
struct Digits {
    inputs: Vec<f32>,
    float: Vec<f32>,
    w8: Vec<f32>,
}

impl Digits {
    fn load() -> Digits {
        let golden = Golden::load(models().join("digits-mlp/golden")).unwrap();
        let read = |f: &str| {
            perch_runtime::engine::read_npy(models().join("digits-mlp/golden").join(f))
                .map(|a| floats(a.view()))
                .unwrap()
        };
        Digits {
            inputs: floats(golden.inputs[0].view()),
            float: read("output_0.npy"),
            w8: read("output_0.w8.npy"),
        }
    }

    fn body(&self, row: usize) -> Value {
        json!({"inputs": [{
            "name": "pixels", "shape": [1, 64], "datatype": "FP32",
            "data": self.inputs[row * 64..(row + 1) * 64],
        }]})
    }

    fn want(&self, variant: &str, row: usize) -> &[f32] {
        let all = if variant == "a" {
            &self.float
        } else {
            &self.w8
        };
        &all[row * 10..(row + 1) * 10]
    }
}

/// What a routed reply said.
struct Answer {
    status: u16,
    variant: Option<String>,
    body: Value,
}

impl Server {
    fn infer_as(&self, path: &str, entity: Option<&str>, body: &Value) -> Answer {
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(entity) = entity {
            request = request.header("X-Perch-Entity-Id", entity);
        }
        let mut response = request.send(body.to_string().as_bytes()).unwrap();
        let status = response.status().as_u16();
        let variant = response
            .headers()
            .get("x-perch-variant")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.body_mut().read_to_string().unwrap();
        Answer {
            status,
            variant,
            body: serde_json::from_str(&text).unwrap(),
        }
    }

    fn experiment(&self, name: &str) -> Value {
        let (status, text) = self.get(&format!("/v2/experiments/{name}"));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

fn expected_variant(entity: &str) -> &'static str {
    if bucket(entity.as_bytes(), b"digits-ab") < 5000 {
        "a"
    } else {
        "b"
    }
}

#[test]
fn each_entity_is_served_by_the_variant_its_bucket_picks_and_the_reply_says_which() {
    let repository = repository(&[
        ("digits-a", digits("model.onnx"), None),
        ("digits-b", digits("model.w8.onnx"), Some("w8")),
    ]);
    let server = serve(repository, vec![digits_ab(&[])], 8);
    let data = Digits::load();
    let mut served = [0u64; 2];
    for i in 0..24 {
        let entity = format!("customer-{i}");
        let row = i % 8;
        let answer = server.infer_as("/v2/models/digits-ab/infer", Some(&entity), &data.body(row));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let want = expected_variant(&entity);
        assert_eq!(answer.variant.as_deref(), Some(want), "{entity}");
        assert_eq!(answer.body["parameters"]["variant"], want);
        assert_eq!(answer.body["parameters"]["experiment"], "digits-ab");
        assert_eq!(answer.body["model_name"], format!("digits-{want}"));
        let got: Vec<f32> =
            serde_json::from_value(answer.body["outputs"][0]["data"].clone()).unwrap();
        let error = relative_error(&got, data.want(want, row));
        assert!(error <= 1e-4, "{entity}: {error}");
        served[usize::from(want == "b")] += 1;
        let again = server.infer_as("/v2/models/digits-ab/infer", Some(&entity), &data.body(0));
        assert_eq!(again.variant.as_deref(), Some(want), "{entity} again");
        served[usize::from(want == "b")] += 1;
    }
    assert!(served[0] > 0 && served[1] > 0, "{served:?}");
    let anonymous = server.infer_as("/v2/models/digits-ab/infer", None, &data.body(1));
    assert_eq!(
        anonymous.variant.as_deref(),
        Some("a"),
        "no entity id: the default"
    );
    served[0] += 1;

    // A request the variant refuses is answered with the reason and counted as its error.
    let bad = json!({"inputs": [{"name": "pixels", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]});
    let refused = server.infer_as("/v2/models/digits-ab/infer", Some("customer-0"), &bad);
    assert_eq!(refused.status, 400);
    assert!(
        refused.body["error"].as_str().unwrap().contains("shape"),
        "{}",
        refused.body
    );
    assert_eq!(
        refused.variant.as_deref(),
        Some(expected_variant("customer-0"))
    );

    let status = server.experiment("digits-ab");
    let figures = |name: &str| {
        let v = status["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone();
        (v["ok"].as_u64().unwrap(), v["errors"].as_u64().unwrap())
    };
    let bad_one = usize::from(expected_variant("customer-0") == "b");
    let mut errors = [0u64; 2];
    errors[bad_one] = 1;
    assert_eq!(figures("a"), (served[0], errors[0]), "{status}");
    assert_eq!(figures("b"), (served[1], errors[1]), "{status}");
    assert!(status["variants"][0]["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(status["entity_id"], "header:x-perch-entity-id");
    let (code, text) = server.get("/v2/experiments/nope");
    assert_eq!(code, 404, "{text}");
    // Metadata and readiness of an experiment's name are its default variant's.
    let (code, text) = server.get("/v2/models/digits-ab");
    assert_eq!(code, 200, "{text}");
    let metadata: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(metadata["name"], "digits-a");
    assert_eq!(metadata["inputs"][0]["name"], "pixels");
    assert_eq!(server.get("/v2/models/digits-ab/ready").0, 200);

    let (code, text) = server.get("/metrics");
    assert_eq!(code, 200);
    promtool_check_metrics(
        "each_entity_is_served_by_the_variant_its_bucket_picks_and_the_reply_says_which",
        text.as_bytes(),
    );
    let sample = |s: &str| server.metric(s);
    assert_eq!(
        sample(
            "perch_experiment_requests_total{experiment=\"digits-ab\",variant=\"a\",status=\"ok\"}"
        ),
        served[0] as f64
    );
    assert_eq!(
        sample("perch_experiment_latency_seconds_count{experiment=\"digits-ab\",variant=\"b\"}"),
        served[1] as f64
    );
}

#[test]
fn a_binary_reply_keeps_a_valid_header_length_with_the_variant_in_its_parameters() {
    let repository = repository(&[
        ("digits-a", digits("model.onnx"), None),
        ("digits-b", digits("model.w8.onnx"), Some("w8")),
    ]);
    let server = serve(repository, vec![digits_ab(&[])], 8);
    let data = Digits::load();
    let mut body = data.body(3);
    body["parameters"] = json!({"binary_data_output": true});
    let mut response = server
        .agent
        .post(format!("{}/v2/models/digits-ab/infer", server.base))
        .header("X-Perch-Entity-Id", "customer-5")
        .send(body.to_string().as_bytes())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let length: usize = response
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.body_mut().read_to_vec().unwrap();
    let header: Value = serde_json::from_slice(&bytes[..length]).unwrap();
    let want = expected_variant("customer-5");
    assert_eq!(header["parameters"]["variant"], want);
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 40);
    let got: Vec<f32> = bytes[length..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(relative_error(&got, data.want(want, 3)) <= 1e-4);
}

#[test]
fn the_entity_id_can_come_from_the_request_parameters_or_a_predict_feature() {
    let iris = models().join("iris-mlp/model.onnx");
    let repository = repository(&[
        ("digits-a", digits("model.onnx"), None),
        ("digits-b", digits("model.w8.onnx"), Some("w8")),
        ("iris-a", iris.clone(), None),
        ("iris-b", iris, None),
    ]);
    let mut by_parameter = digits_ab(&[]);
    by_parameter.entity = EntitySource::Parameter("entity_id".into());
    let by_feature = ExperimentSpec {
        name: "iris-ab".into(),
        variants: vec![variant("a", "iris-a", 30), variant("b", "iris-b", 70)],
        default: "b".into(),
        shadows: Vec::new(),
        entity: EntitySource::Feature("sepal_length".into()),
        agreement: Agreement::Argmax,
        primary: true,
    };
    let server = serve(repository, vec![by_parameter, by_feature], 8);
    let data = Digits::load();
    for i in 0..12 {
        let entity = format!("customer-{i}");
        let mut body = data.body(0);
        body["parameters"] = json!({ "entity_id": entity });
        let answer = server.infer_as("/v2/models/digits-ab/infer", None, &body);
        assert_eq!(answer.variant.as_deref(), Some(expected_variant(&entity)));
    }
    for length in ["5.1", "6.3", "7.7", "4.9", "5.8", "6.0"] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"features": {{"sepal_length": {length}, "sepal_width": 3.0, "petal_length": 4.5, "petal_width": 1.5}}}}"#
        ))
        .unwrap();
        let want = if bucket(length.as_bytes(), b"iris-ab") < 3000 {
            "a"
        } else {
            "b"
        };
        for path in ["/predict", "/predict?model=iris-ab"] {
            let answer = server.infer_as(path, None, &body);
            assert_eq!(answer.status, 200, "{}", answer.body);
            assert_eq!(answer.variant.as_deref(), Some(want), "{path} {length}");
            assert_eq!(answer.body["parameters"]["variant"], want);
            assert!(answer.body["prediction"].is_string(), "{}", answer.body);
        }
    }
}

#[test]
fn shadows_score_copies_after_the_reply_and_their_agreement_and_errors_are_counted() {
    let repository = repository(&[
        ("digits-a", digits("model.onnx"), None),
        ("digits-b", digits("model.w8.onnx"), Some("w8")),
        ("digits-qdq", digits("model.qdq.onnx"), Some("qdq")),
        ("kws-dscnn", models().join("kws-dscnn/model.onnx"), None),
    ]);
    let spec = digits_ab(&[("qdq", "digits-qdq"), ("kws", "kws-dscnn")]);
    let server = serve(repository.clone(), vec![spec], 64);
    let data = Digits::load();
    let sent = 16u64;
    for i in 0..sent as usize {
        let entity = format!("customer-{i}");
        let answer = server.infer_as(
            "/v2/models/digits-ab/infer",
            Some(&entity),
            &data.body(i % 8),
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        let want = expected_variant(&entity);
        let got: Vec<f32> =
            serde_json::from_value(answer.body["outputs"][0]["data"].clone()).unwrap();
        assert!(
            relative_error(&got, data.want(want, i % 8)) <= 1e-4,
            "served answers stay"
        );
        assert_eq!(
            answer.body["model_name"],
            format!("digits-{want}"),
            "never a shadow's"
        );
    }
    let shadow = |name: &str| {
        let status = server.experiment("digits-ab");
        status["shadows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    wait_until("every copy scored", Duration::from_secs(60), || {
        shadow("qdq")["runs"].as_u64() == Some(sent) && shadow("kws")["runs"].as_u64() == Some(sent)
    });
    let qdq = shadow("qdq");
    assert_eq!(
        (qdq["errors"].as_u64(), qdq["dropped"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(qdq["compared"].as_u64(), Some(sent));
    // The int8 model picks the float model's digit on these inputs.
    assert!(qdq["agreement"].as_f64().unwrap() >= 0.85, "{qdq}");
    assert!(qdq["p50_ms"].as_f64().unwrap() > 0.0);
    let kws = shadow("kws");
    assert_eq!(
        (kws["errors"].as_u64(), kws["compared"].as_u64()),
        (Some(sent), Some(0)),
        "{kws}"
    );
    // Shadow runs count in the shadow model's own counters, not the variants'.
    assert_eq!(repository.get("kws-dscnn").unwrap().totals().errors, sent);
    let status = server.experiment("digits-ab");
    let routed: u64 = status["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["ok"].as_u64().unwrap())
        .sum();
    assert_eq!(routed, sent);

    let (_, text) = server.get("/metrics");
    promtool_check_metrics(
        "shadows_score_copies_after_the_reply_and_their_agreement_and_errors_are_counted",
        text.as_bytes(),
    );
    assert_eq!(
        server.metric("perch_experiment_shadow_runs_total{experiment=\"digits-ab\",variant=\"kws\",status=\"error\"}"),
        sent as f64
    );
    assert_eq!(
        server.metric(
            "perch_experiment_shadow_compared_total{experiment=\"digits-ab\",variant=\"qdq\"}"
        ),
        sent as f64
    );
}

/// A model with the digits input that runs for seconds: the row tiled to 512×1024,
/// then 64 products with a 1024×1024 matrix (34 billion multiply-adds).
fn slow_digits() -> Vec<u8> {
    perch_testkit::onnx::slow_matmul_chain_after_row("pixels", 64)
}

#[test]
fn a_shadow_that_hangs_leaves_the_served_answers_and_their_latency_alone_and_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow/model.onnx");
    std::fs::create_dir_all(slow.parent().unwrap()).unwrap();
    std::fs::write(&slow, slow_digits()).unwrap();
    let repository = repository(&[
        ("digits-a", digits("model.onnx"), None),
        ("digits-b", digits("model.w8.onnx"), Some("w8")),
    ]);
    // Loaded without a self-test (no golden folder) and no warm-up, as a test fixture.
    let model = Model::load(&slow, &LoadOptions::new()).unwrap();
    let id = ModelId::new("slow", Version::new(1, 0, 0)).unwrap();
    repository
        .insert(InferenceService::new(model, id, ServiceLimits::DEFAULT), 0)
        .unwrap();
    let server = serve(repository, vec![digits_ab(&[("slow", "slow")])], 1);
    let data = Digits::load();

    // One copy runs for seconds, one waits in the queue of one, the rest are dropped.
    let sent = 12u64;
    let mut slowest = Duration::ZERO;
    for i in 0..sent as usize {
        let entity = format!("customer-{i}");
        let started = Instant::now();
        let answer = server.infer_as(
            "/v2/models/digits-ab/infer",
            Some(&entity),
            &data.body(i % 8),
        );
        slowest = slowest.max(started.elapsed());
        assert_eq!(answer.status, 200);
        let got: Vec<f32> =
            serde_json::from_value(answer.body["outputs"][0]["data"].clone()).unwrap();
        let want = expected_variant(&entity);
        assert!(relative_error(&got, data.want(want, i % 8)) <= 1e-4);
    }
    let shadow = server.experiment("digits-ab")["shadows"][0].clone();
    assert_eq!(
        shadow["runs"].as_u64(),
        Some(0),
        "still on the first copy: {shadow}"
    );
    let dropped = shadow["dropped"].as_u64().unwrap();
    assert!(dropped >= sent - 2, "{shadow}");
    // Each answer came while the shadow ran (a run takes seconds on any machine).
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    // The shadow's run ends, is counted, and the queued copy runs after it.
    wait_until("the slow copies scored", Duration::from_secs(300), || {
        server.experiment("digits-ab")["shadows"][0]["runs"].as_u64() == Some(sent - dropped)
    });
    let shadow = server.experiment("digits-ab")["shadows"][0].clone();
    assert_eq!(shadow["errors"].as_u64(), Some(0), "{shadow}");
    assert_eq!(
        shadow["compared"].as_u64(),
        Some(0),
        "other shapes are not compared"
    );
}
