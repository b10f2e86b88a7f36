//! `perch experiment status` against a running `perchd` (built by
//! `perch_testkit::workspace_binary`) serving an A/B experiment from a configuration
//! file, with requests routed over real HTTP.

use std::path::Path;
use std::process::Command as Std;
use std::time::Duration;

use perch_testkit::{workspace_binary, Port, Process, PATIENCE};
use serde_json::json;

use super::{json, models, perch};

/// `perchd` with digits-mlp as `control` and its int8-weight twin as `candidate` at
/// 50 % each, and the QDQ model as a shadow; its HTTP base URL, and the embedded
/// broker's port, reserved while it runs.
fn perchd(dir: &Path) -> (Process, String, Port) {
    let binary = workspace_binary(
        "perch-firmware",
        "perchd",
        &["firmware", "mqtt", "runtime", "kernels"],
        "PERCH_PERCHD",
    )
    .unwrap();
    let digits = models().join("digits-mlp");
    let config = format!(
        r#"
[model]
path = "{float}"
name = "digits"
warmup_runs = 1

[[models]]
name = "digits-w8"
path = "{w8}"
variant = "w8"
warmup_runs = 1

[[models]]
name = "digits-qdq"
path = "{qdq}"
variant = "qdq"
warmup_runs = 1

[[experiments]]
name = "digits-ab"
default = "control"
variants = [
    {{ name = "control", model = "digits", share = 50 }},
    {{ name = "candidate", model = "digits-w8", share = 50 }},
]
shadows = [{{ name = "qdq", model = "digits-qdq" }}]
"#,
        float = digits.join("model.onnx").display(),
        w8 = digits.join("model.w8.onnx").display(),
        qdq = digits.join("model.qdq.onnx").display(),
    );
    let file = dir.join("perchd.toml");
    std::fs::write(&file, config).unwrap();
    let broker = Port::reserve();
    let mut command = Std::new(binary);
    command
        .env("RUST_LOG", "info")
        .env_remove("PERCH_CONFIG")
        .arg("--config")
        .arg(&file)
        .args([
            "--device-id",
            "experimenter",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--embedded-port", &broker.get().to_string()])
        .arg("--spool-dir")
        .arg(dir.join("spool"));
    let mut agent = Process::spawn("perchd", command, dir.join("perchd.log"));
    let line = agent.wait_for_line("/metrics) on http://", PATIENCE);
    let address = line.rsplit("http://").next().unwrap().trim().to_string();
    (agent, format!("http://{address}"), broker)
}

#[test]
fn experiment_status_shows_each_variants_figures_and_its_test_against_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, base, _port) = perchd(dir.path());
    let client: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let good = json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": vec![1.0; 64]}]});
    let bad = json!({"inputs": [{"name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]});
    let mut sent = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for i in 0..40 {
        let body = if i % 10 == 0 { &bad } else { &good };
        let response = client
            .post(format!("{base}/v2/models/digits-ab/infer"))
            .header("X-Perch-Entity-Id", format!("customer-{i}"))
            .send(body.to_string().as_bytes())
            .unwrap();
        let variant = response.headers()["x-perch-variant"]
            .to_str()
            .unwrap()
            .to_string();
        let entry = sent.entry(variant).or_default();
        if response.status().as_u16() == 200 {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    let output = perch()
        .args([
            "experiment",
            "status",
            "--device",
            &base,
            "digits-ab",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = json(&output.stdout);
    for variant in status["variants"].as_array().unwrap() {
        let name = variant["name"].as_str().unwrap();
        let (ok, errors) = sent.get(name).copied().unwrap_or_default();
        assert_eq!(variant["requests"].as_u64(), Some(ok + errors), "{variant}");
        assert_eq!(variant["errors"].as_u64(), Some(errors), "{variant}");
        if name == "control" {
            assert!(variant["error_rate_test"].is_null());
        } else if ok + errors > 0 && sent.contains_key("control") {
            let p = variant["error_rate_test"]["p_value"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "{variant}");
        }
    }
    assert_eq!(status["shadows"][0]["name"], "qdq");

    let output = perch()
        .args(["experiment", "status", "--device", &base, "digits-ab"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("experiment digits-ab on http://"), "{text}");
    assert!(
        text.contains("control *") && text.contains("p-value") && text.contains("qdq"),
        "{text}"
    );

    let output = perch()
        .args(["experiment", "status", "--device", &base, "nope"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.contains("answered 404: no experiment named \"nope\""),
        "{err}"
    );
}
