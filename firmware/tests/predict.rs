//! `/predict` and KServe V1 named features against the real HTTP server on
//! 127.0.0.1:0, with models loaded as perchd loads them (`load::load`): the tabular
//! reference model (models/iris-mlp, its `schema.json` beside it) and a signed bundle
//! whose manifest carries a schema with a categorical feature. Each prediction is
//! checked against the engine run on the row the schema describes.

mod common;

use std::path::{Path, PathBuf};

use common::http::HttpServer as Server;
use common::{floats, models, reference_bundle};
use perch_firmware::config::Config;
use perch_firmware::http::HttpLimits;
use perch_firmware::load::{self, LoadError};
use perch_firmware::service::{InferenceService, ServiceLimits};
use perch_runtime::bundle::{self, Feature, FeatureSchema};
use perch_runtime::engine::{Input, LoadOptions, Model};
use serde_json::{json, Value};

/// The servers and requests these tests make.
impl Server {
    /// Serves the model (or bundle) at `path` as perchd would after `load::load`.
    fn start(path: &Path, trusted_keys: Vec<PathBuf>) -> Server {
        let mut config = Config::new("t".parse().unwrap(), path).model;
        config.trusted_keys = trusted_keys;
        config.warmup_runs = 1;
        let loaded = load::load(&config).unwrap();
        assert!(loaded.boot.ready(), "{:?}", loaded.boot.failure);
        let service = InferenceService::new(loaded.model, loaded.id, ServiceLimits::default())
            .with_features(loaded.features);
        Server::serve(service, HttpLimits::default())
    }

    fn iris() -> Server {
        Server::start(&models().join("iris-mlp/model.onnx"), vec![])
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
}

fn iris_schema() -> FeatureSchema {
    let bytes = std::fs::read(models().join("iris-mlp/schema.json")).unwrap();
    FeatureSchema::from_json(&bytes).unwrap()
}

/// The engine's probabilities for one row of `width` values of `model`.
fn engine_row(model: &Path, row: &[f32]) -> Vec<f32> {
    let model = Model::load(model, &LoadOptions::new()).unwrap();
    let mut session = model.session().unwrap();
    let outputs = session.run(&[Input::f32(&[1, row.len()], row)]).unwrap();
    floats(outputs.view(0).unwrap())
}

/// The argmax and its value.
fn best(probabilities: &[f32]) -> (usize, f32) {
    probabilities.iter().enumerate().fold(
        (0, f32::MIN),
        |b, (i, p)| if *p > b.1 { (i, *p) } else { b },
    )
}

/// The first held-out flower of models/README.md, a virginica.
const FLOWER: [f64; 4] = [6.3, 3.4, 5.6, 2.4];

fn flower_body() -> Value {
    json!({"features": {"sepal_length": FLOWER[0], "sepal_width": FLOWER[1],
                        "petal_length": FLOWER[2], "petal_width": FLOWER[3]}})
}

#[test]
fn predict_answers_the_label_and_probability_the_engine_gives_for_the_standardized_row() {
    let server = Server::iris();
    let (status, answer) = server.post("/predict", flower_body().to_string().as_bytes());
    assert_eq!(status, 200, "{answer}");

    let schema = iris_schema();
    let row: Vec<f32> = schema
        .features
        .iter()
        .zip(FLOWER)
        .map(|(f, x)| match f {
            Feature::Numeric { mean, std, .. } => ((x - mean) / std) as f32,
            Feature::Categorical { .. } => unreachable!("iris is numeric"),
        })
        .collect();
    let (class, probability) = best(&engine_row(&models().join("iris-mlp/model.onnx"), &row));
    assert_eq!(answer["prediction"], json!(schema.labels[class]));
    assert_eq!(answer["prediction"], "virginica");
    assert_eq!(answer["probability"].as_f64().unwrap() as f32, probability);
    assert_eq!(answer["model_version"], "0.0.0");
    let latency = answer["latency_ms"].as_f64().unwrap();
    assert!(latency > 0.0 && latency < 1000.0, "{answer}");
    assert_eq!(
        answer.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["latency_ms", "model_version", "prediction", "probability"]
    );
    assert_eq!(
        server.metric("prediction_total{model_name=\"iris-mlp\",status=\"ok\"}"),
        1.0
    );
}

#[test]
fn bad_features_get_a_400_naming_them_and_count_as_errors_while_serving_goes_on() {
    let server = Server::iris();
    let many: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("f{i}"), json!(1.0))).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            br#"{"features": {"sepal_length": 5, "sepal_width": 3, "petal_length": 1}}"#.to_vec(),
            "missing feature: \"petal_width\"",
        ),
        (
            br#"{"features": {"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_width": 1, "colour": 2}}"#.to_vec(),
            "5 features given; the model takes 4",
        ),
        (
            br#"{"features": {"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_colour": 1}}"#.to_vec(),
            "unknown feature: \"petal_colour\"; the model's features are \"sepal_length\", \"sepal_width\", \"petal_length\", \"petal_width\"",
        ),
        (
            br#"{"features": {"sepal_length": "5.1", "sepal_width": 3, "petal_length": 1, "petal_width": 1}}"#.to_vec(),
            "feature \"sepal_length\" must be a number, got a string (\"5.1\")",
        ),
        (
            br#"{"features": {"sepal_length": "NaN", "sepal_width": 3, "petal_length": 1, "petal_width": 1}}"#.to_vec(),
            "feature \"sepal_length\" must be a number, got a string (\"NaN\")",
        ),
        (
            br#"{"features": {"sepal_length": NaN, "sepal_width": 3, "petal_length": 1, "petal_width": 1}}"#.to_vec(),
            "malformed JSON",
        ),
        (
            serde_json::to_vec(&json!({ "features": many })).unwrap(),
            "10000 features given; the model takes 4",
        ),
        (
            br#"{"sepal_length": 5}"#.to_vec(),
            "the body must be an object with a \"features\" object",
        ),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        let (status, answer) = server.post("/predict", body);
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "case {i}: {error}");
        assert_eq!(
            server.metric("prediction_total{model_name=\"iris-mlp\",status=\"error\"}"),
            (i + 1) as f64
        );
    }
    let (status, answer) = server.post("/predict", flower_body().to_string().as_bytes());
    assert_eq!((status, &answer["prediction"]), (200, &json!("virginica")));
}

#[test]
fn a_model_without_a_schema_refuses_predict_and_says_to_use_tensors() {
    let server = Server::start(&models().join("digits-mlp/model.onnx"), vec![]);
    let (status, answer) = server.post("/predict", flower_body().to_string().as_bytes());
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("model \"digits-mlp\" has no feature schema"),
        "{error}"
    );
}

#[test]
fn kserve_v1_named_objects_are_features_and_rows_are_tensors() {
    let server = Server::iris();
    let flowers = json!({"instances": [
        flower_body()["features"],
        {"sepal_length": 5.0, "sepal_width": 3.5, "petal_length": 1.3, "petal_width": 0.3},
    ]});
    let (status, answer) = server.post(
        "/v1/models/iris-mlp:predict",
        flowers.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions[0]["prediction"], "virginica");
    assert_eq!(predictions[1]["prediction"], "setosa");
    assert_eq!(answer["model_version"], "0.0.0");

    // /predict and V1 agree on the same flower.
    let (_, single) = server.post("/predict", flower_body().to_string().as_bytes());
    assert_eq!(single["probability"], predictions[0]["probability"]);

    // Rows of numbers still go to the model as tensors (already standardized).
    let (status, rows) = server.post(
        "/v1/models/iris-mlp:predict",
        br#"{"instances": [[0.5, 0.8, 1.0, 1.6]]}"#,
    );
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["predictions"][0].as_array().unwrap().len(), 3);

    let (status, answer) = server.post(
        "/v1/models/iris-mlp:predict",
        br#"{"instances": [{"sepal_length": 5.0}, [1, 2, 3, 4]]}"#,
    );
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.starts_with("instance 0: missing features: \"sepal_width\""),
        "{error}"
    );

    let (status, _) = server.post("/v1/models/other:predict", flowers.to_string().as_bytes());
    assert_eq!(status, 404);
}

#[test]
fn health_lists_the_served_model() {
    let server = Server::iris();
    let (status, text) = server.get("/health");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "models": [{"name": "iris-mlp", "version": "0.0.0", "ready": true}]})
    );
}

/// R1 (digits, 64 pixels) described as 60 numeric pixels and a categorical feature
/// one-hot over the last 4: a bundle signs the schema, and `/predict` fills the row
/// the engine then sees.
#[test]
fn a_bundle_s_schema_with_a_categorical_feature_fills_the_one_hot_columns() {
    let dir = tempfile::tempdir().unwrap();
    let key = bundle::SigningKey::from_bytes(&[3; 32]);
    let public = dir.path().join("fleet.pub");
    std::fs::write(&public, bundle::verifying_key_file(&key.verifying_key())).unwrap();
    let mut features: Vec<Feature> = (0..60)
        .map(|i| Feature::Numeric {
            name: format!("p{i}"),
            mean: 0.5,
            std: 0.25,
        })
        .collect();
    features.push(Feature::Categorical {
        name: "corner".into(),
        categories: ["nw", "ne", "sw", "se"].map(String::from).to_vec(),
    });
    let schema = FeatureSchema {
        features,
        labels: (0..10).map(|d| format!("digit {d}")).collect(),
    };
    let contents = bundle::BundleContents {
        schema: Some(schema),
        ..reference_bundle("digits-mlp", "digits", "2.1.0")
    };
    let path = dir.path().join("digits.perch");
    std::fs::write(&path, bundle::pack(&contents, &key).unwrap().as_bytes()).unwrap();
    let server = Server::start(&path, vec![public]);

    let pixels: Vec<f64> = (0..60).map(|i| f64::from(i % 7) / 6.0).collect();
    let mut named: serde_json::Map<String, Value> = pixels
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), json!(p)))
        .collect();
    named.insert("corner".into(), json!("sw"));
    let (status, answer) = server.post(
        "/predict",
        json!({ "features": named }).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");

    let mut row: Vec<f32> = pixels.iter().map(|p| ((p - 0.5) / 0.25) as f32).collect();
    row.extend([0.0, 0.0, 1.0, 0.0]);
    let (class, probability) = best(&engine_row(&models().join("digits-mlp/model.onnx"), &row));
    assert_eq!(answer["prediction"], json!(format!("digit {class}")));
    assert_eq!(answer["probability"].as_f64().unwrap() as f32, probability);
    assert_eq!(answer["model_version"], "2.1.0");

    named.insert("corner".into(), json!("middle"));
    let (status, answer) = server.post(
        "/predict",
        json!({ "features": named }).to_string().as_bytes(),
    );
    assert_eq!(status, 400);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("feature \"corner\" must be one of \"nw\", \"ne\", \"sw\", \"se\""),
        "{error}"
    );
}

#[test]
fn a_schema_file_that_does_not_fit_the_model_fails_the_load_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["model.onnx", "golden/input_0.npy", "golden/output_0.npy"] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(models().join("digits-mlp").join(file), to).unwrap();
    }
    std::fs::copy(
        models().join("iris-mlp/schema.json"),
        dir.path().join("schema.json"),
    )
    .unwrap();
    let config = Config::new("t".parse().unwrap(), dir.path().join("model.onnx")).model;
    let err = load::load(&config).unwrap_err();
    assert!(matches!(err, LoadError::Schema { .. }), "{err}");
    let text = perch_runtime::error::Chain(&err).to_string();
    assert!(text.contains("schema.json"), "{text}");
    assert!(text.contains("a row of 4 f32 columns"), "{text}");
}
