//! `perch bench`: the structure and sanity of its measurements (never their speed).

use crate::{json, models, perch};

use std::path::Path;

use serde_json::Value;

fn bench_json(model: &Path, extra: &[&str]) -> Value {
    let out = perch()
        .args(["bench", "--json", "--warmup", "2"])
        .args(extra)
        .arg(model)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json(&out)
}

fn catalog_macs(name: &str) -> u64 {
    let text = std::fs::read_to_string(models().join("models.json")).unwrap();
    let entries: Value = serde_json::from_str(&text).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap()["macs"]
        .as_u64()
        .unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The latency block is ordered and consistent with its sample count.
fn assert_sane(report: &Value, samples: u64) {
    let l = &report["latency"];
    assert_eq!(l["samples"].as_u64(), Some(samples), "{l}");
    let (min, p50, p95, p99, max, mean) = (
        f(&l["min_ms"]),
        f(&l["p50_ms"]),
        f(&l["p95_ms"]),
        f(&l["p99_ms"]),
        f(&l["max_ms"]),
        f(&l["mean_ms"]),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p95 && p95 <= p99 && p99 <= max,
        "{l}"
    );
    assert!(min <= mean && mean <= max, "{l}");
    assert!(f(&report["throughput_per_s"]) > 0.0);
    assert!(f(&report["load"]["total_ms"]) > 0.0);
    assert!(f(&report["first_run_ms"]) > 0.0);
}

#[test]
fn bench_reports_quantiles_throughput_memory_and_gflops_on_the_golden_input() {
    let report = bench_json(&models().join("kws-dscnn/model.onnx"), &["--runs", "20"]);
    assert_sane(&report, 20);
    assert_eq!(report["format"], "onnx");
    assert_eq!(report["sample"]["kind"], "golden");
    assert_eq!(report["input_shapes"], serde_json::json!([[1, 1, 49, 10]]));
    assert_eq!(report["threads"], 1);
    assert!(report["peak_rss_kib"].as_u64().unwrap() > 1024);
    assert_eq!(
        report["compute"]["macs"].as_u64(),
        Some(catalog_macs("kws-dscnn"))
    );
    // GFLOP/s is 2 × MACs / p50 by definition.
    let want =
        2.0 * catalog_macs("kws-dscnn") as f64 / (f(&report["latency"]["p50_ms"]) * 1e-3) / 1e9;
    assert!((f(&report["gflops_at_p50"]) - want).abs() <= 1e-9 * want.max(1.0));
    let stages = &report["load"]["stages"];
    for stage in ["read_ms", "type_ms", "declutter_ms", "optimize_ms"] {
        assert!(f(&stages[stage]) >= 0.0, "{stages}");
    }
    assert!(report["profile"].is_null());
}

#[test]
fn threads_run_independent_sessions_and_every_run_is_a_sample() {
    let report = bench_json(
        &models().join("anomaly-ae/model.w8.onnx"),
        &["--threads", "2", "--runs", "15"],
    );
    assert_sane(&report, 30);
    assert_eq!(report["threads"], 2);
    assert!(report["threading"]
        .as_str()
        .unwrap()
        .contains("independent sessions"));
}

#[test]
fn the_profile_covers_every_node_of_the_plan_and_its_shares_add_up_to_100() {
    let model = models().join("mobilenetv2-035/model.w8.onnx");
    let report = bench_json(&model, &["--runs", "3", "--profile"]);
    let profile = &report["profile"];
    assert_eq!(profile["runs"], 3);
    let ops = profile["ops"].as_array().unwrap();
    let total: f64 = ops.iter().map(|o| f(&o["percent"])).sum();
    assert!((total - 100.0).abs() < 0.01, "{total}");
    // Sorted slowest first.
    for pair in ops.windows(2) {
        assert!(f(&pair[0]["ms_per_run"]) >= f(&pair[1]["ms_per_run"]));
    }
    // Every node of the optimized plan is counted once, as `perch inspect` counts them.
    let nodes: u64 = ops.iter().map(|o| o["nodes"].as_u64().unwrap()).sum();
    let inspect = perch()
        .args(["inspect", "--json"])
        .arg(&model)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(Some(nodes), json(&inspect)["optimized_nodes"].as_u64());
    // The engine's cost model of the optimized plan finds the same MACs as the
    // ONNX count, so each op type's GFLOP/s is measured against real work.
    let macs: u64 = ops.iter().map(|o| o["macs"].as_u64().unwrap()).sum();
    assert_eq!(Some(macs), report["compute"]["macs"].as_u64());
    for op in ops {
        assert_eq!(op["gflops"].is_null(), op["macs"] == 0, "{op}");
    }
    let top = profile["top_nodes"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 10);
    assert!(f(&profile["nodes_ms"]) > 0.0 && f(&profile["run_ms"]) > 0.0);

    let text = perch()
        .args(["bench", "--runs", "2", "--warmup", "1", "--profile"])
        .arg(&model)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("profile") && text.contains("slowest nodes"),
        "{text}"
    );
}

#[test]
fn a_golden_batch_counts_the_multiply_accumulates_of_the_whole_batch() {
    // digits-mlp's golden input is a batch of 8 rows for a symbolic batch dimension.
    let report = bench_json(&models().join("digits-mlp/model.onnx"), &["--runs", "5"]);
    assert_eq!(report["input_shapes"], serde_json::json!([[8, 64]]));
    assert_eq!(
        report["compute"]["macs"].as_u64(),
        Some(8 * catalog_macs("digits-mlp"))
    );
}

#[test]
fn without_golden_inputs_a_synthetic_input_with_batch_1_is_used_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("mlp.onnx");
    std::fs::copy(models().join("digits-mlp/model.onnx"), &model).unwrap();
    let report = bench_json(&model, &["--runs", "5"]);
    assert_eq!(report["sample"]["kind"], "synthetic");
    assert!(report["sample"]["notes"].to_string().contains("set to 1"));
    assert_eq!(report["input_shapes"], serde_json::json!([[1, 64]]));
    assert_eq!(
        report["compute"]["macs"].as_u64(),
        Some(catalog_macs("digits-mlp"))
    );
}

#[test]
fn an_nnef_archive_is_benchmarked_with_the_engine_cost_model() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("kws.nnef.tgz");
    perch()
        .arg("convert")
        .arg(models().join("kws-dscnn/model.onnx"))
        .arg("-o")
        .arg(&archive)
        .assert()
        .success();
    let report = bench_json(&archive, &["--runs", "5"]);
    assert_sane(&report, 5);
    assert_eq!(report["format"], "nnef");
    assert!(report["load"]["stages"]["type_ms"].is_null());
    assert_eq!(
        report["compute"]["macs"].as_u64(),
        Some(catalog_macs("kws-dscnn"))
    );
}

#[test]
fn a_bundle_is_benchmarked_on_its_own_golden_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    perch().arg("keygen").arg("-o").arg(&key).assert().success();
    let bundle = dir.path().join("kws.perch");
    perch()
        .arg("pack")
        .arg(models().join("kws-dscnn/model.w8.onnx"))
        .args([
            "--name",
            "kws",
            "--version",
            "1.0.0",
            "--sequence",
            "1",
            "--key",
        ])
        .arg(&key)
        .arg("-o")
        .arg(&bundle)
        .assert()
        .success();
    let report = bench_json(&bundle, &["--runs", "5"]);
    assert_sane(&report, 5);
    assert_eq!(report["sample"]["kind"], "golden");
    assert!(report["sample"]["description"]
        .as_str()
        .unwrap()
        .contains("kws.perch"));
    assert_eq!(
        report["compute"]["macs"].as_u64(),
        Some(catalog_macs("kws-dscnn"))
    );
}

#[test]
fn bad_arguments_and_bad_files_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x01not a model").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["/nonexistent/m.onnx".into()], "/nonexistent/m.onnx"),
        (vec![corrupt.display().to_string()], "corrupt.onnx"),
        (
            vec![
                "--runs".into(),
                "0".into(),
                models().join("kws-dscnn/model.onnx").display().to_string(),
            ],
            "at least 1",
        ),
        (
            vec![
                "--threads".into(),
                "0".into(),
                models().join("kws-dscnn/model.onnx").display().to_string(),
            ],
            "at least 1",
        ),
        (
            vec![models()
                .join("fixtures/unsupported-op.onnx")
                .display()
                .to_string()],
            "vendor_conv",
        ),
    ];
    for (args, needle) in cases {
        let assert = perch().arg("bench").args(&args).assert().code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn the_profile_shows_the_layers_perch_kernels_run() {
    let model = models().join("kws-dscnn/model.onnx");
    let report = bench_json(&model, &["--runs", "3", "--profile"]);
    let ops = report["profile"]["ops"].as_array().unwrap();
    let dw = ops.iter().find(|o| o["op"] == "PerchDwConv").unwrap();
    assert_eq!(dw["nodes"], 4);
    assert_eq!(dw["macs"], 4 * 64 * 25 * 5 * 9);
}
