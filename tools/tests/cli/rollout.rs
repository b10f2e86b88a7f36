//! `perch rollout` as an operator runs it: real bundles and keys in temporary folders,
//! state files written by the real controller.

use crate::{json, models, perch};

use std::path::{Path, PathBuf};

use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{DeviceState, DeviceStatus, FORMAT};
use perch_runtime::wire::{MetricsReport, ModelId, Version, FORMAT_VERSION};
use perch_tools::rollout::operator::Store;
use perch_tools::rollout::{parse_gates, parse_stages, Clock, Controller, Plan};

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

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let secret = dir.join(format!("{name}.key"));
    perch()
        .arg("keygen")
        .arg("-o")
        .arg(&secret)
        .assert()
        .success();
    secret
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
    let key = keygen(dir.path(), "fleet");
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
    let key = keygen(dir.path(), "fleet");
    let other = keygen(dir.path(), "other");
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
        rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [9, 9, 9]),
        bundle: perch_runtime::rollout::BundleRef::describe("kws", "1.3.0", 8, &bytes, 4096),
        stages: parse_stages("10,50,100").unwrap(),
        soak_ms: 600_000,
        gates: parse_gates("p99<10ms,error_rate<1%").unwrap(),
        min_devices: 1,
        device_soak_s: 60,
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
            update: 1,
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
    let key = keygen(dir.path(), "fleet");
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
    let key = keygen(dir.path(), "fleet");
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = perch()
        .args(["rollout", "pause", "--group", "kitchen", "--timeout", "1s"])
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .output()
        .unwrap();
    fails_in_one_line(output, "cannot reach");
}

/// A device as the protocol wants it, on its own MQTT connection: follows the group's
/// signed document, fetches the bundle chunk by chunk when in the cohort (checking
/// every chunk and the whole file), reports its states and, every 200 ms, metrics of
/// the model it serves. Returns the bundle bytes it assembled, if any.
fn device(
    id: String,
    port: u16,
    trusted: ed25519_dalek::VerifyingKey,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Option<Vec<u8>> {
    use perch_runtime::rollout::{self as wire, ChunkRequest, RolloutDocument};
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    use std::time::{Duration, Instant};

    let mut options = MqttOptions::new(id.clone(), "127.0.0.1", port);
    options.set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut connection) = Client::new(options, 64);
    let mut doc: Option<RolloutDocument> = None;
    let mut bundle: Vec<u8> = Vec::new();
    let mut next_chunk: Option<u32> = None;
    let mut active = false;
    let mut sent_state: Option<DeviceState> = None;
    let mut update = 0;
    let mut last_report = Instant::now();
    let mut seq = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client
                    .subscribe(wire::document_topic("kitchen"), QoS::AtLeastOnce)
                    .unwrap();
                client
                    .subscribe(wire::chunk_topic(&id), QoS::AtMostOnce)
                    .unwrap();
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic.ends_with("/ota/chunk") => {
                let (Some(d), Some(index)) = (&doc, next_chunk) else {
                    continue;
                };
                let frame = wire::decode_chunk(&p.payload).unwrap();
                if frame.rollout_id == d.rollout_id
                    && frame.index == index
                    && d.bundle.chunk_matches(index, frame.data)
                {
                    bundle.extend_from_slice(frame.data);
                    if index + 1 < d.bundle.chunk_count() {
                        next_chunk = Some(index + 1);
                    } else {
                        next_chunk = None;
                        let whole =
                            wire::BundleRef::describe("", "", 0, &bundle, d.bundle.chunk_size);
                        assert_eq!(whole.sha256, d.bundle.sha256);
                        active = true;
                    }
                }
                if let Some(index) = next_chunk {
                    let request = ChunkRequest {
                        rollout_id: d.rollout_id.clone(),
                        index,
                    };
                    client
                        .publish(
                            wire::chunk_request_topic(&id),
                            QoS::AtMostOnce,
                            false,
                            serde_json::to_vec(&request).unwrap(),
                        )
                        .unwrap();
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let d = RolloutDocument::verify(&p.payload, &[trusted]).unwrap();
                if d.phase == perch_runtime::rollout::Phase::Running
                    && d.in_cohort(&id)
                    && !active
                    && next_chunk.is_none()
                {
                    next_chunk = Some(0);
                    bundle.clear();
                    let request = ChunkRequest {
                        rollout_id: d.rollout_id.clone(),
                        index: 0,
                    };
                    client
                        .publish(
                            wire::chunk_request_topic(&id),
                            QoS::AtMostOnce,
                            false,
                            serde_json::to_vec(&request).unwrap(),
                        )
                        .unwrap();
                }
                doc = Some(d);
            }
            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
            _ => {}
        }
        let Some(d) = &doc else { continue };
        if last_report.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_report = Instant::now();
        let state = match (active, next_chunk.is_some()) {
            (true, _) => DeviceState::Active,
            (false, true) => DeviceState::Downloading,
            (false, false) => DeviceState::NotInCohort,
        };
        let version = if active {
            Version::new(1, 3, 0)
        } else {
            Version::new(1, 2, 0)
        };
        if sent_state != Some(state) {
            sent_state = Some(state);
            update += 1;
            let status = DeviceStatus {
                format: FORMAT,
                device: id.clone(),
                rollout_id: d.rollout_id.clone(),
                revision: d.revision,
                version: d.bundle.version.clone(),
                sequence: d.bundle.sequence,
                bucket: d.bucket(&id),
                state,
                progress_pct: None,
                reason: None,
                serving: format!("kws {version}"),
                update,
            };
            client
                .publish(
                    wire::status_topic(&id),
                    QoS::AtLeastOnce,
                    false,
                    status.to_json(),
                )
                .unwrap();
        }
        let mut latency = Histogram::new();
        for _ in 0..40 {
            latency.record_ns(3_000_000);
        }
        seq += 1;
        let report = MetricsReport {
            format: FORMAT_VERSION,
            seq,
            uptime_s: 1,
            interval_ms: 200,
            model: ModelId::new("kws", version).unwrap(),
            ok: 40,
            errors: 0,
            latency,
        };
        let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
        let bytes = report.encode(&mut buf).unwrap().to_vec();
        client
            .publish(
                format!("perch/{id}/metrics"),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .unwrap();
    }
    active.then_some(bundle)
}

/// Runs mosquitto on a free local port; fails the test when it is not installed.
fn mosquitto(dir: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmessage_size_limit 2097152\n"),
    )
    .unwrap();
    let binary = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "mosquitto".into());
    let child = std::process::Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let child = child.unwrap_or_else(|e| {
        panic!(
            "cannot start mosquitto ({e}): this test runs the operator against a real broker; \
             install it (Debian/Ubuntu: apt-get install mosquitto)"
        )
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, port)
}

/// Kills a child process when dropped, so a failed assertion leaves nothing running.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_rollout_served_over_mosquitto_is_paused_resumed_and_completes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (broker, port) = mosquitto(dir.path());
    let _broker = Reap(broker);
    let key = keygen(dir.path(), "fleet");
    let bundle = pack(dir.path(), &key);
    let trusted = perch_runtime::bundle::read_verifying_key(dir.path().join("fleet.pub")).unwrap();
    let state = dir.path().join("rollouts");
    let url = format!("mqtt://127.0.0.1:{port}");
    let stop = Arc::new(AtomicBool::new(false));
    // 12 devices: the 50 % cohort is empty with probability 2^-12.
    let devices: Vec<_> = (0..12)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || device(format!("pi-{i}"), port, trusted, stop))
        })
        .collect();

    let controller = std::process::Command::new(assert_cmd::cargo::cargo_bin("perch"))
        .args(["rollout", "start"])
        .arg(&bundle)
        .args(["--group", "kitchen", "--key"])
        .arg(&key)
        .arg("--state-dir")
        .arg(&state)
        .args(["--broker", &url, "--stages", "50,100", "--soak", "2s"])
        .args([
            "--gate",
            "p99<10ms,error_rate<1%",
            "--chunk-size",
            "16KiB",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut controller = Reap(controller);

    let command = |verb: &str| {
        let output = perch()
            .args([
                "rollout", verb, "--group", "kitchen", "--broker", &url, "--json",
            ])
            .args(["--reason", "test"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{verb}: {}", stderr(&output));
        json(&output.stdout)
    };
    assert_eq!(command("pause")["phase"], "paused");
    assert_eq!(command("resume")["phase"], "running");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = controller.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut lines = String::new();
    std::io::Read::read_to_string(controller.0.stdout.as_mut().unwrap(), &mut lines).unwrap();
    assert!(status.success(), "{status}: {lines}");
    stop.store(true, Ordering::Relaxed);
    let original = std::fs::read(&bundle).unwrap();
    for device in devices {
        assert_eq!(device.join().unwrap().as_deref(), Some(&original[..]));
    }

    let decisions: Vec<serde_json::Value> = lines.lines().map(|l| json(l.as_bytes())).collect();
    let phases: Vec<&str> = decisions
        .iter()
        .map(|d| d["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"running"));
    assert!(phases.contains(&"paused"), "{lines}");
    assert_eq!(phases.last(), Some(&"completed"), "{lines}");
    let percents: Vec<f64> = decisions
        .iter()
        .map(|d| d["percent"].as_f64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100.0));

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
    let report = json(&output.stdout);
    assert_eq!(report["phase"], "completed");
    assert_eq!(report["devices"].as_array().unwrap().len(), 12);
    // After the end, a command finds no controller.
    let output = perch()
        .args(["rollout", "abort", "--group", "kitchen", "--broker", &url])
        .args(["--timeout", "1s"])
        .output()
        .unwrap();
    fails_in_one_line(
        output,
        "cannot abort the rollout of group kitchen: it is completed",
    );
}
