//! `perch rollout` as an operator runs it: real bundles and keys in temporary folders,
//! state files written by the real controller.

use crate::{json, keygen, models, perch};

use std::path::{Path, PathBuf};

use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{DeviceState, DeviceStatus, FORMAT};
use perch_runtime::wire::{MetricsReport, ModelId, Version, FORMAT_VERSION};
use perch_tools::rollout::operator::Store;
use perch_tools::rollout::{parse_gates, parse_stages, Clock, Controller, Plan, Unexercised};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the command failed with exit 2 and one `perch: ` line holding `needle`.
fn fails_in_one_line(output: std::process::Output, needle: &str) {
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("perch: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

/// `perch pack` of kws-dscnn 1.3.0, sequence 8, signed with `key`.
fn pack(dir: &Path, key: &Path) -> PathBuf {
    let out = dir.join("kws-1.3.0.perch");
    perch()
        .arg("pack")
        .arg(models().join("kws-dscnn/model.onnx"))
        .args(["--name", "kws", "--version", "1.3.0", "--sequence", "8"])
        .arg("--key")
        .arg(key)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    out
}

fn start(bundle: &Path, key: &Path, state_dir: &Path, extra: &[&str]) -> std::process::Output {
    perch()
        .args(["rollout", "start"])
        .arg(bundle)
        .args(["--group", "kitchen", "--key"])
        .arg(key)
        .arg("--state-dir")
        .arg(state_dir)
        // A closed port: these runs must stop before they would connect.
        .args(["--broker", "mqtt://127.0.0.1:9"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn rollout_help_explains_stages_gates_and_commands() {
    let output = perch().args(["rollout", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "canary",
        "start",
        "run",
        "status",
        "promote",
        "pause",
        "resume",
        "abort",
        "perch/fleet/GROUP/rollout",
        "ACL",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let output = perch()
        .args(["rollout", "start", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--gate",
        "p99<10ms",
        "--stages",
        "--soak",
        "--min-devices",
        "merged",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn start_with_a_bad_gate_fails_in_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "fleet").0;
    let bundle = pack(dir.path(), &key);
    let state = dir.path().join("rollouts");
    fails_in_one_line(
        start(&bundle, &key, &state, &["--gate", "p99<10"]),
        "gate \"p99<10\": latency limit \"10\" needs a unit",
    );
    fails_in_one_line(
        start(&bundle, &key, &state, &["--stages", "10,50"]),
        "the last stage must be 100",
    );
    assert!(!state.exists());
}

#[test]
fn start_with_an_unreadable_bundle_or_the_wrong_key_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "fleet").0;
    let other = keygen(dir.path(), "other").0;
    let bundle = pack(dir.path(), &key);
    let state = dir.path().join("rollouts");
    fails_in_one_line(
        start(&dir.path().join("missing.perch"), &key, &state, &[]),
        "cannot read the bundle",
    );
    let junk = dir.path().join("junk.perch");
    std::fs::write(&junk, b"not a bundle").unwrap();
    fails_in_one_line(start(&junk, &key, &state, &[]), "cannot read the bundle");
    fails_in_one_line(
        start(&bundle, &other, &state, &[]),
        "does not verify with the public half of",
    );
    assert!(!state.exists());
}

/// A controller's state for group kitchen: stage 1 of 10,50,100 with a p99 gate, one
/// canary device reporting the new version and one outside the cohort on the old one.
fn write_state(state_dir: &Path, bundle: &Path) -> (String, String) {
    let bytes = std::fs::read(bundle).unwrap();
    let plan = Plan {
        group: "kitchen".into(),
        model: None,
        rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [9, 9, 9]),
        bundle: perch_runtime::rollout::BundleRef::describe("kws", "1.3.0", 8, &bytes, 4096),
        stages: parse_stages("10,50,100").unwrap(),
        soak_ms: 600_000,
        gates: parse_gates("p99<10ms,error_rate<1%").unwrap(),
        min_devices: 1,
        device_soak_s: 60,
        device_soak_requests: 100,
        min_requests: 100,
        unexercised: Unexercised::Wait,
        fresh_s: 0,
        fleet: None,
    };
    let (mut c, _) = Controller::start(plan, Clock::new(0, 1_790_000_000_000)).unwrap();
    let doc = c.document();
    let ids: Vec<String> = (0..1000).map(|i| format!("pi-{i}")).collect();
    let canary = ids.iter().find(|d| doc.in_cohort(d)).unwrap().clone();
    let outside = ids.iter().find(|d| !doc.in_cohort(d)).unwrap().clone();
    for (device, state, version, latency_us) in [
        (&canary, DeviceState::Active, Version::new(1, 3, 0), 4_000),
        (
            &outside,
            DeviceState::NotInCohort,
            Version::new(1, 2, 0),
            2_000,
        ),
    ] {
        let status = DeviceStatus {
            format: FORMAT,
            device: device.clone(),
            rollout_id: doc.rollout_id.clone(),
            revision: doc.revision,
            version: "1.3.0".into(),
            sequence: 8,
            bucket: doc.bucket(device),
            state,
            progress_pct: None,
            reason: None,
            serving: format!("kws {version}"),
            model: None,
            update: 1,
            frozen: false,
        };
        assert!(c.on_status(status, Clock::new(1_000, 1_790_000_001_000)));
        let mut latency = Histogram::new();
        for _ in 0..50 {
            latency.record_ns(latency_us * 1_000);
        }
        let report = MetricsReport {
            format: FORMAT_VERSION,
            seq: 1,
            uptime_s: 10,
            interval_ms: 10_000,
            model: ModelId::new("kws", version).unwrap(),
            ok: 49,
            errors: 1,
            latency,
        };
        assert!(c.on_metrics(device, &report, Clock::new(2_000, 1_790_000_002_000)));
    }
    c.tick(Clock::new(3_000, 1_790_000_003_000));
    let store = Store::new(state_dir, "kitchen").unwrap();
    store.save_bundle(&bytes).unwrap();
    store.save(c.state()).unwrap();
    (canary, outside)
}

#[test]
fn status_json_shows_a_state_written_by_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "fleet").0;
    let bundle = pack(dir.path(), &key);
    let state = dir.path().join("rollouts");
    let (canary, outside) = write_state(&state, &bundle);

    let output = perch()
        .args([
            "rollout",
            "status",
            "--group",
            "kitchen",
            "--json",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let report = json(&output.stdout);
    assert_eq!(report["phase"], "running");
    assert_eq!(report["stage"], 1);
    assert_eq!(report["stages"][0]["percent"], 10.0);
    assert_eq!(report["stages"][0]["state"], "current");
    assert_eq!(report["canary"]["devices"], 1);
    assert_eq!(report["canary"]["requests"], 50);
    assert_eq!(report["canary"]["error_rate"], 0.02);
    let p99 = report["canary"]["p99_ms"].as_f64().unwrap();
    assert!((p99 - 4.0).abs() < 4.0 * 0.1222, "{p99}");
    let rest_p99 = report["rest"]["p99_ms"].as_f64().unwrap();
    assert!((rest_p99 - 2.0).abs() < 2.0 * 0.1222, "{rest_p99}");
    let devices = report["devices"].as_array().unwrap();
    let line = |id: &str| devices.iter().find(|d| d["device"] == id).unwrap().clone();
    assert_eq!(line(&canary)["state"], "active");
    assert_eq!(line(&canary)["in_cohort"], true);
    assert_eq!(line(&outside)["state"], "not in cohort");
    assert_eq!(line(&outside)["serving"], "kws 1.2.0");
    assert!(report["log"][0]["message"]
        .as_str()
        .unwrap()
        .contains("started rollout"));

    let text = perch()
        .args(["rollout", "status", "--group", "kitchen", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&canary) && text.contains("p99<10ms"),
        "{text}"
    );
}

#[test]
fn start_refuses_while_a_rollout_of_the_group_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "fleet").0;
    let bundle = pack(dir.path(), &key);
    let state = dir.path().join("rollouts");
    write_state(&state, &bundle);
    let before = std::fs::read(state.join("kitchen.json")).unwrap();
    fails_in_one_line(
        start(&bundle, &key, &state, &[]),
        "`perch rollout abort --group kitchen`",
    );
    assert_eq!(std::fs::read(state.join("kitchen.json")).unwrap(), before);
}

#[test]
fn status_of_a_group_without_a_rollout_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = perch()
        .args(["rollout", "status", "--group", "garage", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    fails_in_one_line(output, "perch rollout start");
}

#[test]
fn a_command_without_a_reachable_broker_fails_in_one_line() {
    // Reserved, so nothing else listens there while this test runs.
    let port = perch_testkit::Port::reserve();
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(dir.path(), "fleet");
    let output = perch()
        .args(["rollout", "pause", "--group", "kitchen", "--timeout", "1s"])
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", port.get())])
        .arg("--key")
        .arg(&secret)
        .output()
        .unwrap();
    fails_in_one_line(output, "cannot reach");
}
