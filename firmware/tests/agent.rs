//! `perchd` as a process, against its embedded broker and against mosquitto.
//!
//! Every test starts its own brokers and agents on free ports on 127.0.0.1, with short
//! report intervals, and kills them when it ends (also when it fails). The mosquitto
//! tests need `mosquitto` installed (`apt-get install mosquitto`); without it they fail
//! and say so.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use perch_firmware::service::{binary, InferRequest, RequestTensor, TensorValues};
use perch_runtime::engine::read_npy;
use perch_runtime::wire::MetricsReport;
use serde_json::{json, Value};

use common::{floats, models, relative_error, spooled_records, Mqtt};
use perch_testkit::{wait_until, Mosquitto, Port, Process, PATIENCE};

const DEVICE: &str = "test-gw";

fn topic(leaf: &str) -> String {
    format!("perch/{DEVICE}/{leaf}")
}

/// Starts `perchd` serving R2 (kws-dscnn) with 200 ms reports, its spool in `dir`.
fn perchd(dir: &Path, args: &[&str]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_perchd"));
    command
        .env("RUST_LOG", "info,perch_firmware=debug")
        .env_remove("PERCH_CONFIG")
        .args([
            "--device-id",
            DEVICE,
            "--model",
            models().join("kws-dscnn/model.onnx").to_str().unwrap(),
            "--report-interval",
            "200ms",
            "--spool-dir",
            dir.join("spool").to_str().unwrap(),
            "--warmup",
            "2",
        ])
        .args(args);
    if !args.contains(&"--http-listen") {
        command.args(["--http-listen", "off"]);
    }
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    Process::spawn("perchd", command, dir.join(format!("perchd-{n}.log")))
}

/// The address `perchd` reports it serves HTTP on (it was given port 0 to bind).
fn http_address(agent: &mut Process) -> String {
    let line = agent.wait_for_line("/metrics) on http://", PATIENCE);
    line.rsplit("http://")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// R2's golden input and output, flat.
struct Golden {
    shape: Vec<usize>,
    input: Vec<f32>,
    output: Vec<f32>,
}

fn golden() -> Golden {
    let dir = models().join("kws-dscnn/golden");
    let input = read_npy(dir.join("input_0.npy")).unwrap();
    let output = read_npy(dir.join("output_0.npy")).unwrap();
    Golden {
        shape: input.shape().to_vec(),
        input: floats(input.view()),
        output: floats(output.view()),
    }
}

fn json_request(id: &str, g: &Golden) -> Vec<u8> {
    json!({
        "id": id,
        "inputs": [{"name": "mfcc", "shape": g.shape, "datatype": "FP32", "data": g.input}]
    })
    .to_string()
    .into_bytes()
}

/// Waits for the JSON reply with `id` on `…/infer/res`.
fn json_reply(mqtt: &Mqtt, id: &str) -> Value {
    mqtt.wait_for(&topic("infer/res"), |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["id"] == id).then_some(body)
    })
}

fn output_of(reply: &Value) -> Vec<f32> {
    reply["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs in {reply}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Waits for the agent's `online` status; fails at once if the agent exits.
fn wait_online(mqtt: &Mqtt, agent: &mut Process) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the online status"
        );
        let Some(payload) = mqtt.next_within(&topic("status"), Duration::from_millis(100)) else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        if body["state"] == "online" {
            return body;
        }
    }
}

/// Decodes every metrics report until `enough` says stop; returns them in arrival order.
fn collect_reports(
    mqtt: &Mqtt,
    mut enough: impl FnMut(&[MetricsReport]) -> bool,
) -> Vec<MetricsReport> {
    let metrics = topic("metrics");
    let mut reports = Vec::new();
    while !enough(&reports) {
        let payload = mqtt.next(&metrics);
        reports.push(MetricsReport::decode(&payload).expect("a report that decodes"));
    }
    reports
}

#[test]
fn with_the_embedded_broker_inference_over_mqtt_returns_the_golden_outputs_and_metrics_follow() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = Port::reserve();
    let port = reserved.get();
    let mut agent = perchd(
        dir.path(),
        &[
            "--broker",
            "embedded",
            "--embedded-port",
            &port.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let http = http_address(&mut agent);
    let g = golden();
    let mqtt = Mqtt::connect(
        port,
        "embedded",
        &[
            topic("status"),
            topic("infer/res"),
            topic("infer/res/bin"),
            topic("metrics"),
            topic("metrics/json"),
        ],
        false,
    );
    let online = wait_online(&mqtt, &mut agent);
    assert_eq!(online["model"], "kws-dscnn");
    assert_eq!(online["version"], "0.0.0");
    assert_eq!(online["ready"], true);

    // JSON, the Open Inference Protocol body with its id.
    for i in 0..5 {
        let id = format!("json-{i}");
        mqtt.publish(&topic("infer/req"), json_request(&id, &g));
        let reply = json_reply(&mqtt, &id);
        assert_eq!(reply["model_name"], "kws-dscnn");
        assert_eq!(reply["outputs"][0]["shape"], json!([1, 12]));
        let err = relative_error(&output_of(&reply), &g.output);
        assert!(err <= 1e-4, "relative error {err}");
    }

    // Postcard.
    let request = InferRequest {
        id: Some("bin-1".into()),
        inputs: vec![RequestTensor {
            name: "mfcc".into(),
            shape: g.shape.clone(),
            data: TensorValues::F32(g.input.clone()),
        }],
    };
    mqtt.publish(&topic("infer/req/bin"), binary::encode_request(&request));
    let response = mqtt.wait_for(
        &topic("infer/res/bin"),
        |payload| match binary::decode_reply(payload).unwrap() {
            binary::BinaryReply::Ok(r) if r.id.as_deref() == Some("bin-1") => Some(r),
            _ => None,
        },
    );
    let TensorValues::F32(output) = &response.outputs[0].data else {
        panic!("{response:?}")
    };
    assert!(relative_error(output, &g.output) <= 1e-4);

    // The six requests show up in the reports, with their latencies.
    let reports = collect_reports(&mqtt, |r| r.iter().map(|r| r.ok).sum::<u32>() >= 6);
    let mut latency = perch_runtime::histogram::Histogram::new();
    for r in &reports {
        assert_eq!(r.model.name.as_str(), "kws-dscnn");
        assert_eq!(r.errors, 0);
        latency.merge(&r.latency);
    }
    assert_eq!(latency.count(), 6);
    let (p50, p99) = (
        latency.quantile(0.5).unwrap(),
        latency.quantile(0.99).unwrap(),
    );
    assert!(
        p50 > Duration::ZERO && p50 <= p99 && p99 < Duration::from_secs(5),
        "{p50:?} {p99:?}"
    );
    let seqs: Vec<u32> = reports.iter().map(|r| r.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The JSON twin of an interval with traffic has the quantiles.
    mqtt.publish(&topic("infer/req"), json_request("last", &g));
    json_reply(&mqtt, "last");
    let twin = mqtt.wait_for(&topic("metrics/json"), |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["ok"].as_u64() > Some(0)).then_some(body)
    });
    assert_eq!(twin["model"], "kws-dscnn");
    assert_eq!(twin["state"], "ready");
    let q = &twin["latency_ms"];
    let (p50, p95, p99) = (
        q["p50"].as_f64().unwrap(),
        q["p95"].as_f64().unwrap(),
        q["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{twin}");
    assert!(twin["throughput"].as_f64().unwrap() > 0.0);
    assert!(twin["rss_kib"].as_u64().unwrap() > 0);

    // The same process serves HTTP, from the same service and counters.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let mut response = agent
        .post(format!("http://{http}/v2/models/kws-dscnn/infer"))
        .header("Content-Type", "application/json")
        .send(&json_request("http-1", &g)[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let reply: Value = serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(reply["id"], "http-1");
    assert!(relative_error(&output_of(&reply), &g.output) <= 1e-4);
    let metrics = agent
        .get(format!("http://{http}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let ok_total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"prediction_total{model_name="kws-dscnn",status="ok"} "#))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert_eq!(
        ok_total, 8.0,
        "5 JSON and 1 postcard over MQTT, 1 more, 1 over HTTP"
    );
}

#[test]
fn with_the_embedded_broker_bad_requests_get_error_replies_and_the_agent_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = Port::reserve();
    let port = reserved.get();
    // An error-rate SLO the bad requests break.
    let config = dir.path().join("perchd.toml");
    std::fs::write(&config, "[slo]\nmax_error_rate = 0.05\n").unwrap();
    let mut agent = perchd(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--broker",
            "embedded",
            "--embedded-port",
            &port.to_string(),
            "--max-payload",
            "64KiB",
        ],
    );
    let g = golden();
    let mqtt = Mqtt::connect(
        port,
        "bad",
        &[
            topic("status"),
            topic("infer/res"),
            topic("infer/res/bin"),
            topic("metrics"),
            topic("metrics/json"),
            topic("health/json"),
        ],
        false,
    );
    wait_online(&mqtt, &mut agent);
    let req = topic("infer/req");

    let mut wrong_shape = g.input.clone();
    wrong_shape.pop();
    let mut with_nan: Vec<Value> = g.input.iter().map(|v| json!(v)).collect();
    with_nan[3] = json!("NaN");
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "malformed",
            br#"{"id": "malformed", "inputs": [}"#.to_vec(),
            400,
            "",
        ),
        (
            "shape",
            json!({"id": "shape", "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10],
                   "datatype": "FP32", "data": wrong_shape}]})
            .to_string()
            .into_bytes(),
            400,
            "490",
        ),
        (
            "dtype",
            json!({"id": "dtype", "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10],
                   "datatype": "INT64", "data": vec![0; 490]}]})
            .to_string()
            .into_bytes(),
            400,
            "FP32",
        ),
        (
            "nan",
            json!({"id": "nan", "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10],
                   "datatype": "FP32", "data": with_nan}]})
            .to_string()
            .into_bytes(),
            400,
            "NaN",
        ),
        (
            "name",
            json!({"id": "name", "inputs": [{"name": "audio", "shape": [1, 1, 49, 10],
                   "datatype": "FP32", "data": g.input}]})
            .to_string()
            .into_bytes(),
            400,
            "audio",
        ),
    ];
    for (id, payload, status, needle) in &cases {
        mqtt.publish(&req, payload.clone());
        let reply = json_reply(&mqtt, id);
        assert_eq!(reply["status"], *status, "{id}: {reply}");
        let reason = reply["error"].as_str().unwrap_or_else(|| panic!("{reply}"));
        assert!(reason.contains(needle), "{id}: {reason}");
    }

    // Over the payload limit: answered with the limit, not a dropped connection.
    let big = format!(r#"{{"id": "big", "pad": "{}"}}"#, "x".repeat(80 * 1024));
    mqtt.publish(&req, big);
    let reply = json_reply(&mqtt, "big");
    assert_eq!(reply["status"], 413, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("65536"),
        "{reply}"
    );

    // Garbage postcard: an error reply in postcard.
    mqtt.publish(&topic("infer/req/bin"), vec![1u8, 0xFF, 0xFF, 0xFF]);
    let reply = binary::decode_reply(&mqtt.next(&topic("infer/res/bin"))).unwrap();
    let binary::BinaryReply::Error { id, status, reason } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((id, status), (None, 400), "{reason}");

    // A postcard request whose id decodes but whose tensors do not: the error carries
    // the id back.
    mqtt.publish(
        &topic("infer/req/bin"),
        vec![1u8, 1, 2, b'p', b'7', 0xFF, 0xFF],
    );
    let reply = binary::decode_reply(&mqtt.next(&topic("infer/res/bin"))).unwrap();
    let binary::BinaryReply::Error { id, status, reason } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((id.as_deref(), status), (Some("p7"), 400), "{reason}");

    // Still serving.
    mqtt.publish(&req, json_request("after", &g));
    let reply = json_reply(&mqtt, "after");
    assert!(relative_error(&output_of(&reply), &g.output) <= 1e-4);

    // All eight failures were counted as errors, the good one as ok.
    let reports = collect_reports(&mqtt, |r| {
        r.iter().map(|r| r.errors).sum::<u32>() >= 8 && r.iter().map(|r| r.ok).sum::<u32>() >= 1
    });
    assert_eq!(reports.iter().map(|r| r.errors).sum::<u32>(), 8);
    assert_eq!(reports.iter().map(|r| r.ok).sum::<u32>(), 1);

    // Intervals with errors missed the SLO: the device said so, and why.
    let twin = mqtt.wait_for(&topic("metrics/json"), |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["errors"].as_u64() > Some(0)).then_some(body)
    });
    assert_eq!(twin["state"], "degraded", "{twin}");
    assert_eq!(twin["slo"]["ok"], false);
    let violation = twin["slo"]["violations"][0].as_str().unwrap();
    assert!(violation.starts_with("error rate"), "{violation}");
    let health = mqtt.wait_for(&topic("health/json"), |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["state"] == "degraded").then_some(body)
    });
    assert!(
        health["last_error"]
            .as_str()
            .unwrap()
            .contains("over the SLO"),
        "{health}"
    );
}

#[test]
fn against_mosquitto_the_agent_answers_and_its_last_will_says_offline_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let test = "against_mosquitto_the_agent_answers_and_its_last_will_says_offline_when_killed";
    let Some(broker) = Mosquitto::start(test, dir.path()) else {
        return;
    };
    let port = broker.port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut agent = perchd(dir.path(), &["--broker", &url]);
    let g = golden();
    let mqtt = Mqtt::connect(
        port,
        "mosq",
        &[topic("status"), topic("infer/res"), topic("health/json")],
        false,
    );
    let online = wait_online(&mqtt, &mut agent);
    assert_eq!(online["device"], DEVICE);
    mqtt.publish(&topic("infer/req"), json_request("m-1", &g));
    let reply = json_reply(&mqtt, "m-1");
    assert!(relative_error(&output_of(&reply), &g.output) <= 1e-4);
    let health: Value = serde_json::from_slice(&mqtt.next(&topic("health/json"))).unwrap();
    assert_eq!(health["state"], "ready");
    assert_eq!(health["model"], "kws-dscnn");

    agent.kill(); // no goodbye: the broker publishes the last will
    let status = topic("status");
    mqtt.wait_for(&status, |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["state"] == "offline").then_some(())
    });
    // Retained: a client that connects later learns the device is offline.
    let late = Mqtt::connect(port, "late", &[topic("status")], false);
    let body: Value = serde_json::from_slice(&late.next(&status)).unwrap();
    assert_eq!(body["state"], "offline");
}

#[test]
fn against_mosquitto_reports_spooled_during_a_broker_outage_arrive_in_order_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let test =
        "against_mosquitto_reports_spooled_during_a_broker_outage_arrive_in_order_without_gaps";
    let Some(mut broker) = Mosquitto::start(test, dir.path()) else {
        return;
    };
    let port = broker.port();
    // A fast reconnect so the test is short; the backoff itself is tested in perch-mqtt.
    let config = dir.path().join("perchd.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_base = \"100ms\"\nreconnect_cap = \"500ms\"\n"
        ),
    )
    .unwrap();
    let mut agent = perchd(dir.path(), &["--config", config.to_str().unwrap()]);
    // A persistent session: mosquitto keeps the subscription and queues reports for it
    // across its own restart, whenever the agent delivers them.
    let mqtt = Mqtt::connect(port, "outage", &[topic("metrics"), topic("status")], true);
    wait_online(&mqtt, &mut agent);
    let before = collect_reports(&mqtt, |r| r.len() >= 3);

    broker.stop();
    // Several intervals offline: reports pile up in the spool.
    let spool = dir.path().join("spool");
    wait_until("7 reports spooled", PATIENCE, || {
        spooled_records(&spool) >= 7
    });
    broker.restart();

    let last_before = before.last().unwrap().seq;
    let after = collect_reports(&mqtt, |r| {
        r.last().is_some_and(|r| r.seq >= last_before + 15)
    });
    let mut seqs: Vec<u32> = before.iter().chain(&after).map(|r| r.seq).collect();
    // At-least-once: a report whose PUBACK was lost with the broker may come twice.
    seqs.dedup();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "reports missing or out of order: {seqs:?}"
    );
    assert!(seqs.len() >= 18);
}

#[test]
fn against_mosquitto_a_clean_shutdown_says_offline_and_the_next_start_delivers_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let test =
        "against_mosquitto_a_clean_shutdown_says_offline_and_the_next_start_delivers_the_spool";
    let Some(mut broker) = Mosquitto::start(test, dir.path()) else {
        return;
    };
    let port = broker.port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let mqtt = Mqtt::connect(port, "restart", &[topic("metrics"), topic("status")], true);
    let mut agent = perchd(dir.path(), &["--broker", &url]);
    wait_online(&mqtt, &mut agent);
    let first = collect_reports(&mqtt, |r| r.len() >= 2);

    // The broker goes away, reports spool, and the agent is stopped while it is gone.
    broker.stop();
    let spool = dir.path().join("spool");
    wait_until("3 reports spooled", PATIENCE, || {
        spooled_records(&spool) >= 3
    });
    agent.terminate();
    let spooled = spooled_records(&spool);
    assert!(spooled >= 3, "{spooled} reports spooled");

    broker.restart();
    let mut agent = perchd(dir.path(), &["--broker", &url]);
    let last_first = first.last().unwrap().seq;
    let rest = collect_reports(&mqtt, |r| r.len() >= spooled + 2);
    let mut seqs: Vec<u32> = first.iter().chain(&rest).map(|r| r.seq).collect();
    seqs.dedup();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "reports of the first run lost or reordered: {seqs:?}"
    );
    assert!(seqs.last().unwrap() > &(last_first + spooled as u32));

    // Stopped while the broker is up, it says goodbye itself.
    agent.terminate();
    mqtt.wait_for(&topic("status"), |payload| {
        let body: Value = serde_json::from_slice(payload).ok()?;
        (body["state"] == "offline").then_some(())
    });
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
/// `dir`: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "perch test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, san) in [("server", "127.0.0.1"), ("client", "test-gw")] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, san);
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn against_mosquitto_over_mqtts_with_a_client_certificate_the_agent_connects_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let (tls, plain) = (Port::reserve(), Port::reserve());
    let (tls_port, plain_port) = (tls.get(), plain.get());
    // A plain listener for this test's client (first: the broker is up once it
    // accepts), and a TLS one that wants a client certificate signed by the CA, for
    // the agent.
    let listeners = format!(
        "listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
         listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\n",
        ca = d.join("ca.pem").display(),
        cert = d.join("server.pem").display(),
        key = d.join("server.key").display(),
    );
    let test =
        "against_mosquitto_over_mqtts_with_a_client_certificate_the_agent_connects_and_answers";
    let Some(_broker) = Mosquitto::start_with(test, d, vec![plain, tls], &listeners, "SKIPPED")
    else {
        return;
    };

    let g = golden();
    let mqtt = Mqtt::connect(
        plain_port,
        "tls",
        &[topic("status"), topic("infer/res")],
        false,
    );
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let mut agent = perchd(
        d,
        &[
            "--broker",
            &url,
            "--mqtt-ca",
            &path("ca.pem"),
            "--mqtt-client-cert",
            &path("client.pem"),
            "--mqtt-client-key",
            &path("client.key"),
        ],
    );
    wait_online(&mqtt, &mut agent);
    mqtt.publish(&topic("infer/req"), json_request("tls-1", &g));
    let reply = json_reply(&mqtt, "tls-1");
    assert!(relative_error(&output_of(&reply), &g.output) <= 1e-4);
}
