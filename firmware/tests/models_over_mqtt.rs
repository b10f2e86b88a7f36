//! Several models per device, over MQTT, with `perchd` as a process on its embedded
//! broker (rumqttd) and on mosquitto: the repository's load, unload and index as
//! signed commands on `perch/{device}/repository/req`, and an over-the-air rollout
//! addressing one model of the repository by name, which swaps that model only and
//! rolls back only that model, while the primary model serves on untouched. The test
//! plays the operator: it signs the documents and commands, and serves the chunks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{floats, models, reference_bundle, relative_error, Mqtt};
use perch_runtime::bundle::{self, SigningKey};
use perch_runtime::engine::Golden;
use perch_runtime::repository_command::{Action, RepositoryCommand};
use perch_runtime::rollout::{self, BundleRef, DeviceStatus, Phase, RolloutDocument};
use perch_runtime::wire::MetricsReport;
use perch_testkit::{Mosquitto, Port, Process, PATIENCE};
use serde_json::{json, Value};

const DEVICE: &str = "gw-models";

fn topic(leaf: &str) -> String {
    format!("perch/{DEVICE}/{leaf}")
}

fn fleet_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

/// Writes `perchd.toml` in `dir`: R2 (kws-dscnn) as the primary model, R1
/// (digits-mlp) as the repository model `digits` (`load` as given), the fleet key
/// trusted, updates for group `kitchen` with short timeouts, reports every 200 ms.
fn config(dir: &Path, broker: &str, load_digits: bool) -> PathBuf {
    let key = dir.join("fleet.pub");
    std::fs::write(
        &key,
        bundle::verifying_key_file(&fleet_key().verifying_key()),
    )
    .unwrap();
    let m = models();
    let text = format!(
        r#"device_id = "{DEVICE}"
report_interval = "200ms"
http_listen = "127.0.0.1:0"

[model]
path = "{kws}"
trusted_keys = ["{key}"]
warmup_runs = 1

[[models]]
name = "digits"
path = "{digits}"
load = {load_digits}
warmup_runs = 1
slo = {{ p99_ms = 1000.0 }}

[broker]
{broker}

[spool]
dir = "{spool}"

[ota]
group = "kitchen"
chunk_timeout = "500ms"
"#,
        kws = m.join("kws-dscnn/model.onnx").display(),
        digits = m.join("digits-mlp/model.onnx").display(),
        key = key.display(),
        spool = dir.join("spool").display(),
    );
    let path = dir.join("perchd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `perchd` with `config`.
fn perchd(dir: &Path, config: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_perchd"));
    command
        .env("RUST_LOG", "info,perch_firmware=debug")
        .env_remove("PERCH_CONFIG")
        .args(["--config", config.to_str().unwrap()]);
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    Process::spawn("perchd", command, dir.join(format!("perchd-{n}.log")))
}

/// The `http://` base of the agent's HTTP server, read from its log.
fn http_base(agent: &mut Process) -> String {
    let line = agent.wait_for_line("/metrics) on http://", PATIENCE);
    format!("http://{}", line.rsplit("http://").next().unwrap().trim())
}

fn wait_online(mqtt: &Mqtt, agent: &mut Process) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        agent.assert_running();
        assert!(Instant::now() < deadline, "the agent never said online");
        let Some(payload) = mqtt.next_within(&topic("status"), Duration::from_millis(100)) else {
            continue;
        };
        let body: Value = serde_json::from_slice(&payload).unwrap_or_default();
        if body["state"] == "online" {
            return;
        }
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Infers the golden input of `models/{folder}` on the model `name` over HTTP:
/// `(status, version served or the error, relative error)`.
fn infer(base: &str, name: &str, folder: &str) -> (u16, String, f32) {
    let golden = Golden::load(models().join(folder).join("golden")).unwrap();
    let input = if folder == "kws-dscnn" {
        "mfcc"
    } else {
        "pixels"
    };
    let body = json!({"inputs": [{
        "name": input,
        "shape": golden.inputs[0].shape(),
        "datatype": "FP32",
        "data": floats(golden.inputs[0].view()),
    }]});
    let mut response = client()
        .post(format!("{base}/v2/models/{name}/infer"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = response.status().as_u16();
    let reply: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    if status != 200 {
        return (
            status,
            reply["error"].as_str().unwrap_or("").into(),
            f32::NAN,
        );
    }
    let got: Vec<f32> = serde_json::from_value(reply["outputs"][0]["data"].clone()).unwrap();
    let error = relative_error(&got, &floats(golden.outputs[0].view()));
    (
        status,
        reply["model_version"].as_str().unwrap().into(),
        error,
    )
}

/// Publishes a repository request and waits for the reply with `id`.
fn command(mqtt: &Mqtt, id: &str, payload: Vec<u8>) -> Value {
    mqtt.publish(&topic("repository/req"), payload);
    mqtt.wait_for(&topic("repository/res"), |payload| {
        let reply: Value = serde_json::from_slice(payload).ok()?;
        (reply["id"] == id).then_some(reply)
    })
}

fn signed(action: Action, model: &str, revision: u64, id: &str) -> RepositoryCommand {
    RepositoryCommand {
        id: Some(id.into()),
        ..RepositoryCommand::new(action, DEVICE, Some(model), revision)
    }
}

/// `state` of the model `name` in a reply's index.
fn state_of(reply: &Value, name: &str) -> String {
    reply["models"]
        .as_array()
        .unwrap_or_else(|| panic!("no index in {reply}"))
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn signed_commands_over_the_embedded_broker_load_and_unload_a_model_and_everything_else_is_refused_with_a_reason(
) {
    let dir = tempfile::tempdir().unwrap();
    let reserved = Port::reserve();
    let port = reserved.get();
    let broker = format!("url = \"embedded\"\nembedded_port = {port}");
    let config = config(dir.path(), &broker, false);
    let mut agent = perchd(dir.path(), &config);
    let base = http_base(&mut agent);
    let mqtt = Mqtt::connect(
        port,
        "operator",
        &[topic("status"), topic("repository/res")],
        false,
    );
    wait_online(&mqtt, &mut agent);
    let key = fleet_key();

    let index = command(
        &mqtt,
        "i-1",
        br#"{"action": "index", "id": "i-1"}"#.to_vec(),
    );
    assert_eq!(index["status"], 200, "{index}");
    assert_eq!(state_of(&index, "kws-dscnn"), "READY");
    assert_eq!(state_of(&index, "digits"), "UNAVAILABLE");

    // Refused, each with a reason, and nothing changes.
    let other_key = SigningKey::from_bytes(&[12; 32]);
    let mut elsewhere = signed(Action::Load, "digits", 5, "r-4");
    elsewhere.device = "gw-other".into();
    let refusals: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "r-1",
            br#"{"action": "load", "id": "r-1"}"#.to_vec(),
            403,
            "must be signed",
        ),
        (
            "r-2",
            signed(Action::Load, "digits", 5, "r-2").sign(&other_key),
            403,
            "not a trusted key",
        ),
        (
            "r-3",
            {
                let mut signed: Value =
                    serde_json::from_slice(&signed(Action::Load, "digits", 5, "r-3").sign(&key))
                        .unwrap();
                signed["command"] = json!(signed["command"]
                    .as_str()
                    .unwrap()
                    .replace("\"load\"", "\"unload\""));
                signed.to_string().into_bytes()
            },
            403,
            "does not verify",
        ),
        ("r-4", elsewhere.sign(&key), 403, "for device \"gw-other\""),
        (
            "r-5",
            br#"{"action": "reboot", "id": "r-5"}"#.to_vec(),
            400,
            "malformed",
        ),
        (
            "r-6",
            signed(Action::Unload, "kws-dscnn", 6, "r-6").sign(&key),
            400,
            "primary model",
        ),
        (
            "r-7",
            signed(Action::Load, "nothing", 7, "r-7").sign(&key),
            404,
            "no model named",
        ),
        (
            "r-8",
            {
                let mut c = signed(Action::Load, "kws", 8, "r-8");
                c.path = Some(models().join("kws-dscnn/model.onnx").display().to_string());
                c.sign(&key)
            },
            400,
            "only a signed bundle",
        ),
    ];
    for (id, payload, status, needle) in refusals {
        let reply = command(&mqtt, id, payload);
        assert_eq!(reply["status"], status, "{id}: {reply}");
        let error = reply["error"].as_str().unwrap_or("");
        assert!(
            error.contains(needle),
            "{id}: {error:?} should say {needle:?}"
        );
        assert_eq!(state_of(&reply, "digits"), "UNAVAILABLE", "{id}");
    }
    // Junk without an id, and an oversized payload: answered, without an id.
    for junk in [vec![0xff; 16], vec![b'{'; 5000]] {
        mqtt.publish(&topic("repository/req"), junk);
        let reply: Value = serde_json::from_slice(&mqtt.next(&topic("repository/res"))).unwrap();
        assert!(reply["status"] == 400 || reply["status"] == 413, "{reply}");
        assert!(reply["error"].as_str().is_some(), "{reply}");
    }

    let load = signed(Action::Load, "digits", 10, "c-1").sign(&key);
    let reply = command(&mqtt, "c-1", load.clone());
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(state_of(&reply, "digits"), "READY");
    let (status, _, error) = infer(&base, "digits", "digits-mlp");
    assert_eq!(status, 200);
    assert!(error <= 1e-4);

    let reply = command(&mqtt, "c-1", load.clone());
    assert_eq!(reply["status"], 403, "a replay: {reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("replayed command"),
        "{reply}"
    );

    let reply = command(
        &mqtt,
        "c-2",
        signed(Action::Unload, "digits", 11, "c-2").sign(&key),
    );
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(state_of(&reply, "digits"), "UNAVAILABLE");
    let (status, reason, _) = infer(&base, "digits", "digits-mlp");
    assert_eq!(
        (status, reason.as_str()),
        (404, "model \"digits\" is not ready: unloaded")
    );
    // The primary served throughout.
    assert_eq!(infer(&base, "kws-dscnn", "kws-dscnn").0, 200);

    // After a restart, the recorded commands are still replays.
    agent.terminate();
    let mut agent = perchd(dir.path(), &config);
    wait_online(&mqtt, &mut agent);
    let reply = command(&mqtt, "c-1", load);
    assert_eq!(reply["status"], 403, "a replay after a restart: {reply}");
    assert_eq!(state_of(&reply, "digits"), "UNAVAILABLE");
}

#[test]
fn against_mosquitto_a_signed_load_and_unload_take_effect_and_an_unsigned_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let test =
        "against_mosquitto_a_signed_load_and_unload_take_effect_and_an_unsigned_one_does_not";
    let Some(broker) = Mosquitto::start(test, dir.path()) else {
        return;
    };
    let port = broker.port();
    let config = config(
        dir.path(),
        &format!("url = \"mqtt://127.0.0.1:{port}\""),
        false,
    );
    let mut agent = perchd(dir.path(), &config);
    let base = http_base(&mut agent);
    let mqtt = Mqtt::connect(
        port,
        "operator",
        &[topic("status"), topic("repository/res")],
        false,
    );
    wait_online(&mqtt, &mut agent);
    let reply = command(&mqtt, "u-1", br#"{"action": "load", "id": "u-1"}"#.to_vec());
    assert_eq!(reply["status"], 403, "{reply}");
    let key = fleet_key();
    let reply = command(
        &mqtt,
        "m-1",
        signed(Action::Load, "digits", 1, "m-1").sign(&key),
    );
    assert_eq!(
        (reply["status"].clone(), state_of(&reply, "digits")),
        (json!(200), "READY".into())
    );
    assert_eq!(infer(&base, "digits", "digits-mlp").0, 200);
    let reply = command(
        &mqtt,
        "m-2",
        signed(Action::Unload, "digits", 2, "m-2").sign(&key),
    );
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(infer(&base, "digits", "digits-mlp").0, 404);
    assert_eq!(infer(&base, "kws-dscnn", "kws-dscnn").0, 200);
}

/// A release of the repository model `digits`: R1 packed as `digits` `version`.
fn digits_release(version: &str, sequence: u64) -> Vec<u8> {
    let mut contents = reference_bundle("digits-mlp", "digits", version);
    contents.sequence = sequence;
    bundle::pack(&contents, &fleet_key())
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn document(bundle: &[u8], revision: u64, phase: Phase, model: Option<&str>) -> RolloutDocument {
    RolloutDocument {
        format: rollout::FORMAT,
        group: "kitchen".into(),
        rollout_id: "digits-1.1.0".into(),
        revision,
        issued: "2026-12-07T12:00:00Z".into(),
        phase,
        percent_bp: 10_000,
        soak_s: 3_600,
        soak_min_requests: 1,
        fresh_s: 0,
        expires_unix_s: 0,
        model: model.map(str::to_string),
        bundle: BundleRef::describe("digits", "1.1.0", 2, bundle, rollout::MIN_CHUNK_SIZE * 4),
    }
}

/// Answers the device's chunk requests of `doc` until it reports `want` for the
/// rollout; returns that report.
fn serve_until(
    mqtt: &Mqtt,
    agent: &mut Process,
    doc: &RolloutDocument,
    bundle: &[u8],
    want: rollout::DeviceState,
) -> DeviceStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        agent.assert_running();
        assert!(Instant::now() < deadline, "no {want} report in time");
        let Some((t, payload)) = mqtt.any_within(Duration::from_millis(100)) else {
            continue;
        };
        if t == topic("ota/req") {
            let request: rollout::ChunkRequest = serde_json::from_slice(&payload).unwrap();
            if request.rollout_id != doc.rollout_id {
                continue;
            }
            let range = doc.bundle.chunk_range(request.index).unwrap();
            let data = &bundle[range.start as usize..range.end as usize];
            mqtt.publish(
                &topic("ota/chunk"),
                rollout::encode_chunk(&doc.rollout_id, request.index, data),
            );
        } else if t == topic("rollout") {
            let status = DeviceStatus::from_json(&payload).unwrap();
            assert_eq!(status.rollout_id, doc.rollout_id, "{status:?}");
            assert_eq!(status.model.as_deref(), Some("digits"), "{status:?}");
            assert_ne!(status.state, rollout::DeviceState::Failed, "{status:?}");
            if status.state == want {
                return status;
            }
        }
    }
}

#[test]
fn a_rollout_of_a_repository_model_swaps_that_model_only_and_an_abort_rolls_back_only_that_model() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = Port::reserve();
    let port = reserved.get();
    let broker = format!("url = \"embedded\"\nembedded_port = {port}");
    let config = config(dir.path(), &broker, true);
    let mut agent = perchd(dir.path(), &config);
    let base = http_base(&mut agent);
    let mqtt = Mqtt::connect(
        port,
        "operator",
        &[
            topic("status"),
            topic("ota/req"),
            topic("rollout"),
            topic("metrics"),
        ],
        false,
    );
    wait_online(&mqtt, &mut agent);
    assert_eq!(infer(&base, "digits", "digits-mlp").1, "0.0.0");
    let key = fleet_key();
    let release = digits_release("1.1.0", 2);

    // Signed for the model, but published on the primary's topic: refused there (by
    // the primary's updater, as another model's) and nothing happens.
    let doc = document(&release, 1, Phase::Running, Some("digits"));
    mqtt.publish("perch/fleet/kitchen/rollout", doc.sign(&key));
    mqtt.publish(
        "perch/fleet/kitchen/model/digits/rollout",
        document(&release, 2, Phase::Running, Some("digits")).sign(&key),
    );
    let doc = document(&release, 2, Phase::Running, Some("digits"));
    let active = serve_until(
        &mqtt,
        &mut agent,
        &doc,
        &release,
        rollout::DeviceState::Active,
    );
    assert_eq!(active.serving, "digits 1.1.0");

    let (status, version, error) = infer(&base, "digits", "digits-mlp");
    assert_eq!((status, version.as_str()), (200, "1.1.0"));
    assert!(error <= 1e-4);
    let (status, version, error) = infer(&base, "kws-dscnn", "kws-dscnn");
    assert_eq!(
        (status, version.as_str()),
        (200, "0.0.0"),
        "the primary is untouched"
    );
    assert!(error <= 1e-4);
    let ota = dir.path().join("ota");
    assert!(ota.join("models/digits/slots/slots.json").exists());
    assert!(
        !ota.join("slots/slots.json").exists() || {
            let slots = std::fs::read_to_string(ota.join("slots/slots.json")).unwrap();
            !slots.contains("\"digits\"")
        },
        "the primary's slots hold no digits release"
    );
    // The model's metrics reports travel under its own id, for the operator's gates.
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "no metrics report of digits 1.1.0"
        );
        let report = MetricsReport::decode(&mqtt.next(&topic("metrics"))).unwrap();
        if report.model.name.as_str() == "digits" && report.model.version.to_string() == "1.1.0" {
            break;
        }
    }

    let abort = document(&release, 3, Phase::Aborted, Some("digits"));
    mqtt.publish("perch/fleet/kitchen/model/digits/rollout", abort.sign(&key));
    let back = serve_until(
        &mqtt,
        &mut agent,
        &abort,
        &release,
        rollout::DeviceState::RolledBack,
    );
    assert_eq!(back.serving, "digits 0.0.0");
    let deadline = Instant::now() + PATIENCE;
    while infer(&base, "digits", "digits-mlp").1 != "0.0.0" {
        assert!(Instant::now() < deadline, "digits never went back to 0.0.0");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, error) = infer(&base, "digits", "digits-mlp");
    assert_eq!(status, 200);
    assert!(error <= 1e-4);
    assert_eq!(infer(&base, "kws-dscnn", "kws-dscnn").1, "0.0.0");
    let log = agent.log();
    assert!(
        log.contains("updates the digits model, this rollout is the primary model's"),
        "the document on the primary's topic was refused: {log}"
    );
}
