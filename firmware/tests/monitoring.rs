//! The monitoring files in deploy/ against the real agent: every perchd series that
//! the alert rules (deploy/prometheus/perch-rules.yml) and the Grafana dashboard
//! (deploy/grafana/perch.json) use is in the `/metrics` of a running `perchd`, the rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`), and the
//! spool series the device alerts read move when reports are really dropped.
//!
//! promtool comes with Debian's `prometheus` package; without it the promtool checks
//! are skipped, saying so, unless `PERCH_REQUIRE_TOOLS` is set (CI).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::models;
use perch_testkit::{promtool_check_metrics, tool_or_skip, wait_until, Process, PATIENCE};
use serde_json::Value;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(repository().join(file)).unwrap()
}

/// `perchd` serving R2 over HTTP on a port of its own, with 200 ms reports, a spool of
/// 2 records and a broker that is never there (a closed port), so reports pile up and
/// the spool drops them.
fn perchd_without_broker(dir: &Path) -> (Process, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_perchd"));
    command
        .env("RUST_LOG", "info")
        .env_remove("PERCH_CONFIG")
        .args(["--device-id", "monitored", "--model"])
        .arg(models().join("kws-dscnn/model.onnx"))
        .args(["--broker", "mqtt://127.0.0.1:9"])
        .args(["--report-interval", "200ms", "--spool-max-records", "2"])
        .args(["--http-listen", "127.0.0.1:0", "--warmup", "1"])
        .arg("--spool-dir")
        .arg(dir.join("spool"));
    let mut agent = Process::spawn("perchd", command, dir.join("perchd.log"));
    let line = agent.wait_for_line("/metrics) on http://", PATIENCE);
    let address = line.rsplit("http://").next().unwrap().trim().to_string();
    (agent, format!("http://{address}"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn get(base: &str, path: &str) -> String {
    agent()
        .get(format!("{base}{path}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of the sample line that starts with `sample` (name and labels).
fn sample(metrics: &str, sample: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The names of a scrape: its families (`# TYPE` lines) and its series (sample lines,
/// a histogram's `_bucket`, `_sum` and `_count`).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every word of `text` that names a series of perchd: it starts with `prediction_`,
/// `perch_` (the operator's `perch_rollout_` aside, checked by the tools' tests) or
/// `process_`.
fn perchd_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| {
            ["prediction_", "perch_", "process_"]
                .iter()
                .any(|p| w.starts_with(p))
                && !w.starts_with("perch_rollout_")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_series_the_rules_and_dashboard_use_is_exported_and_spool_drops_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent_process, base) = perchd_without_broker(dir.path());
    let client = agent();
    let request = std::fs::read(repository().join("docs/examples/kws-request.json")).unwrap();
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/v2/models/kws-dscnn/infer"))
            .header("Content-Type", "application/json")
            .send(&request[..])
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    let bad = client
        .post(format!("{base}/v2/models/kws-dscnn/infer"))
        .header("Content-Type", "application/json")
        .send(&br#"{"inputs": []}"#[..])
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // Reports every 200 ms into a spool of 2 with no broker: the oldest are dropped,
    // and /metrics says so.
    let mut metrics = String::new();
    wait_until("the spool to drop reports", PATIENCE, || {
        metrics = get(&base, "/metrics");
        sample(&metrics, "perch_spool_dropped_reports_total").is_some_and(|v| v >= 2.0)
    });
    agent_process.assert_running();
    assert_eq!(sample(&metrics, "perch_report_backlog"), Some(2.0));
    assert!(metrics.contains("# TYPE perch_spool_dropped_reports_total counter\n"));
    assert!(metrics.contains("# TYPE perch_report_backlog gauge\n"));
    let ok = "prediction_total{model_name=\"kws-dscnn\",status=\"ok\"}";
    let error = "prediction_total{model_name=\"kws-dscnn\",status=\"error\"}";
    assert_eq!(sample(&metrics, ok), Some(3.0));
    assert_eq!(sample(&metrics, error), Some(1.0));

    let names = exported(&metrics);
    for file in [
        "deploy/prometheus/perch-rules.yml",
        "deploy/grafana/perch.json",
    ] {
        let used = perchd_names(&read(file));
        for core in ["prediction_latency_seconds_bucket", "prediction_total"] {
            assert!(used.contains(core), "{file} does not use {core}");
        }
        let missing: Vec<&String> = used.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, which perchd does not export:\n{metrics}"
        );
    }

    let test = "every_series_the_rules_and_dashboard_use_is_exported_and_spool_drops_are_counted";
    promtool_check_metrics(test, metrics.as_bytes());
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests_fire_every_alert() {
    let test = "the_rules_pass_promtool_and_their_unit_tests_fire_every_alert";
    let Some(promtool) = tool_or_skip("promtool", "prometheus", test) else {
        return;
    };
    let folder = repository().join("deploy/prometheus");
    let check = Command::new(&promtool)
        .args(["check", "rules", "perch-rules.yml"])
        .current_dir(&folder)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let unit = Command::new(&promtool)
        .args(["test", "rules", "perch-rules.test.yml"])
        .current_dir(&folder)
        .output()
        .unwrap();
    assert!(
        unit.status.success(),
        "{}{}",
        String::from_utf8_lossy(&unit.stdout),
        String::from_utf8_lossy(&unit.stderr)
    );

    // Every alert of the rules has a test that expects it to fire.
    let rules = read("deploy/prometheus/perch-rules.yml");
    let tests = read("deploy/prometheus/perch-rules.test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for alert in alerts {
        let firing = tests
            .split(&format!("alertname: {alert}\n"))
            .skip(1)
            .any(|after| after.trim_start().starts_with("exp_alerts:\n"));
        assert!(firing, "no test expects {alert} to fire");
    }
}

#[test]
fn the_dashboard_panels_have_unique_ids_and_fit_the_grid() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/perch.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{panel}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{} is {w} wide at {x}", panel["title"]);
        if panel["type"] != "row" {
            assert!(!panel["targets"].as_array().unwrap().is_empty(), "{panel}");
        }
    }
    for wanted in [
        "Latency quantiles per model",
        "Error rate per model",
        "Throughput per model",
    ] {
        assert!(panels.iter().any(|p| p["title"] == wanted), "no {wanted}");
    }
}
