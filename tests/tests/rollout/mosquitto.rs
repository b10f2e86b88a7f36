//! Rollouts on mosquitto: paused while it restarts, over mqtts://, and unmoved by a
//! forged `rolled_back` report.

use super::*;

#[test]
fn a_rollout_paused_by_hand_survives_mosquitto_restarting_and_completes_once_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_rollout_paused_by_hand_survives_mosquitto_restarting_and_completes_once_resumed";
    let Some(mut broker) = Mosquitto::start(test, &dir.path().join("mosquitto")) else {
        return;
    };
    let port = broker.port();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let fleet = small_fleet(
        dir.path(),
        &fixture,
        6,
        BrokerSpec::External {
            host: "127.0.0.1".into(),
            port,
        },
    );
    let ids = fleet.device_ids();
    let rollout_id = pick_rollout_id(&ids, "restart", |size| {
        size(5_000) >= 2 && size(5_000) < ids.len()
    });
    let canaries = cohort(&ids, &rollout_id, 5_000);
    let release = digits_release(dir.path(), &fixture, "1.1.0", 2);
    let mut operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            &[
                "--rollout-id",
                &rollout_id,
                "--stages",
                "50,100",
                "--soak",
                "3s",
                "--gate",
                "error_rate<5%",
                "--min-devices",
                "2",
                "--device-soak",
                "1s",
                "--device-soak-requests",
                "10",
            ],
        )
        .unwrap();
    fleet
        .wait_until("the canaries to serve 1.1.0", PATIENCE, |view| {
            view.all_serving(canaries.iter().map(String::as_str), "1.1.0")
        })
        .unwrap();
    // Paused by hand (a second `perch rollout` process, through the broker), the
    // rollout stays in its first stage across the broker's restart, longer than a soak.
    let paused = operator.command("pause", Some("look first")).unwrap();
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let soaked = |status: &serde_json::Value| status["soaked_ms"].as_u64().unwrap_or(0);
    let before = operator.status().unwrap();
    assert_eq!(before["phase"], "paused");
    broker.restart();
    // Longer than a soak (3 s) of the controller's own time passes after the restart,
    // as its saved state says, and it stays paused.
    wait_until(
        "a soak of controller time after the restart",
        PATIENCE,
        || {
            let status = operator.status().unwrap();
            assert_eq!(status["phase"], "paused", "{status:#}");
            soaked(&status) > soaked(&before) + 3_000
        },
    );
    let view = fleet.view();
    for id in ids.iter().filter(|id| !canaries.contains(*id)) {
        assert_eq!(
            view.device(id).and_then(|d| d.state()),
            Some(DeviceState::NotInCohort),
            "{id} while paused"
        );
    }
    // The operator reconnects on its own; the command is retried until it is there.
    let resumed = (0..10)
        .map(|_| operator.command("resume", None).unwrap())
        .find(|out| out.status.success());
    assert!(
        resumed.is_some(),
        "resume never reached the operator:\n{}",
        operator.log()
    );

    let status = operator.wait_exit(PATIENCE).unwrap();
    assert!(status.success(), "completed:\n{}", operator.log());
    fleet
        .wait_until("every device to confirm 1.1.0", PATIENCE, |view| {
            view.all_serving(ids.iter().map(String::as_str), "1.1.0")
                && ids.iter().all(|id| {
                    view.device(id).and_then(|d| d.state()) == Some(DeviceState::Confirmed)
                })
        })
        .unwrap();
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as `ca.pem`, `server.pem`
/// and `server.key` in `dir`.
fn server_certificate(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "perch test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Issue 15: `perch rollout` spoke plain mqtt:// only, so it could not reach the TLS
/// broker the devices use.
#[test]
fn over_mqtts_the_operator_reaches_mosquitto_and_rolls_a_release_out_to_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    server_certificate(d);
    let (plain, tls) = (Port::reserve(), Port::reserve());
    let (plain_port, tls_port) = (plain.get(), tls.get());
    let listeners = format!(
        "listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
         listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
        ca = d.join("ca.pem").display(),
        cert = d.join("server.pem").display(),
        key = d.join("server.key").display(),
    );
    let test =
        "over_mqtts_the_operator_reaches_mosquitto_and_rolls_a_release_out_to_the_whole_group";
    let Some(_broker) = Mosquitto::start_with(test, d, vec![plain, tls], &listeners, "SKIPPED")
    else {
        return;
    };
    let fixture = FleetFixture::digits(d).unwrap();
    let broker = BrokerSpec::External {
        host: "127.0.0.1".into(),
        port: plain_port,
    };
    let fleet = small_fleet(d, &fixture, 4, broker);
    let ids = fleet.device_ids();
    let release = digits_release(d, &fixture, "1.1.0", 2);
    let ca = d.join("ca.pem").display().to_string();
    let mut operator = Operator::start(
        &release,
        &fixture.key.secret_path,
        &fleet.config().group,
        &format!("mqtts://127.0.0.1:{tls_port}"),
        &d.join("rollouts"),
        &[
            "--mqtt-ca",
            &ca,
            "--rollout-id",
            "tls-1",
            "--stages",
            "100",
            "--soak",
            "1s",
            "--gate",
            "error_rate<5%",
            "--device-soak",
            "1s",
            "--device-soak-requests",
            "10",
        ],
    )
    .unwrap();
    // Meanwhile anyone on the broker reports made-up devices as rolled back (every id
    // is in the cohort of a 100 % stage).
    let forger = Forger::start(plain_port, "tls-1");
    let status = operator.wait_exit(PATIENCE).unwrap();
    drop(forger);
    assert!(status.success(), "completed:\n{}", operator.log());
    let report = operator.status().unwrap();
    let ignored = &report["ignored"]["rolled_back from a device never seen serving the bundle"];
    assert!(ignored.as_u64().unwrap_or(0) >= 1, "{report:#}");
    fleet
        .wait_until("every device to confirm 1.1.0", PATIENCE, |view| {
            ids.iter()
                .all(|id| view.device(id).and_then(|d| d.state()) == Some(DeviceState::Confirmed))
        })
        .unwrap();
}

/// Publishes, every 100 ms until dropped, a `rolled_back` report of rollout
/// `rollout_id` for a made-up device, as anyone who can publish on the broker can.
struct Forger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forger {
    fn start(port: u16, rollout_id: &str) -> Forger {
        use perch_runtime::rollout::{DeviceStatus, FORMAT};
        use rumqttc::{Client, MqttOptions, QoS};
        use std::sync::atomic::{AtomicBool, Ordering};
        let (client, mut connection) =
            Client::new(MqttOptions::new("forger", "127.0.0.1", port), 16);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let rollout_id = rollout_id.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::spawn(move || {
                    for event in connection.iter() {
                        if event.is_err() {
                            return;
                        }
                    }
                });
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let device = format!("made-up-{n}");
                    let report = DeviceStatus {
                        format: FORMAT,
                        device: device.clone(),
                        rollout_id: rollout_id.clone(),
                        revision: u64::MAX,
                        version: "1.1.0".into(),
                        sequence: 2,
                        bucket: 0,
                        state: DeviceState::RolledBack,
                        progress_pct: None,
                        reason: Some("forged".into()),
                        serving: "digits 1.0.0".into(),
                        model: None,
                        update: 1,
                        frozen: false,
                    };
                    let topic = format!("perch/{device}/rollout");
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, false, report.to_json());
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = client.try_disconnect();
            })
        };
        Forger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
