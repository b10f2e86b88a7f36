//! Canary rollouts end to end: the real operator (`perch rollout` as a process) over a
//! fleet of real agents (the simulator's in-process `perchd`s), on the embedded broker
//! and on mosquitto.
//!
//! - 1,000 devices: the 10 % cohort is 10 % ± 2 points, and promoting to 50 % keeps
//!   every earlier member.
//! - A good model goes through every stage to the whole group, surviving an operator
//!   killed with SIGKILL and resumed from its state folder.
//! - Canaries breaching the error-rate or the p99 gate abort the rollout before it
//!   leaves the canary stage, and every canary returns to the old model.
//! - A rollout paused by hand stays in its stage while mosquitto restarts, and completes
//!   once resumed.
//! - The operator reaches mosquitto over mqtts:// (its TLS listener, the devices on the
//!   plain one) and rolls a release out to the whole group.
//! - A made-up device reporting `rolled_back` over the broker does not abort a rollout.
//! - Devices that stop hearing fresh documents (the operator killed) freeze and say so,
//!   and thaw when the operator comes back.
//!
//! Needs `perch` and `perchd` built beside this test (`cargo test --workspace` builds
//! them) and, for the mosquitto test, mosquitto installed (`PERCH_REQUIRE_MOSQUITTO=1`
//! turns its absence into a failure; CI sets it).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use perch_runtime::canary;
use perch_runtime::rollout::DeviceState;
use perch_testkit::{wait_until, Mosquitto, Port};
use perch_tests::sim::{
    digits_slo, pack_bundle, write_file, BrokerSpec, Faults, Fleet, FleetConfig, FleetFixture,
    Operator, Request,
};

/// Long enough for a slow, shared CI machine; waits end as soon as their condition
/// holds.
const PATIENCE: Duration = Duration::from_secs(120);

/// The devices among `ids` in the cohort of `rollout_id` at `basis_points`, computed
/// here from the canary hash, independently of the devices and the operator.
fn cohort(ids: &[String], rollout_id: &str, basis_points: u16) -> BTreeSet<String> {
    ids.iter()
        .filter(|d| canary::bucket(d.as_bytes(), rollout_id.as_bytes()) < basis_points)
        .cloned()
        .collect()
}

/// The first rollout id `{prefix}-{n}` whose cohorts over `ids` satisfy `wanted`
/// (a small fleet's 10 % cohort may be empty; tests pick an id whose isn't).
fn pick_rollout_id(
    ids: &[String],
    prefix: &str,
    wanted: impl Fn(&dyn Fn(u16) -> usize) -> bool,
) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| wanted(&|bp| cohort(ids, id, bp).len()))
        .unwrap()
}

/// A new release of the fleet's digits model: R1 again, as `version` with `sequence`,
/// with a p99 SLO of 1 s: the simulator runs many devices on a few cores, and these
/// tests are not about the device's warm-up check (whose 10 ms would fail some
/// devices of a 1,000-device fleet on a 2-core machine, as it should).
fn digits_release(
    dir: &Path,
    fixture: &FleetFixture,
    version: &str,
    sequence: u64,
) -> std::path::PathBuf {
    let bytes = pack_bundle(
        &perch_tests::models_dir().join("digits-mlp"),
        "digits",
        version,
        sequence,
        &perch_runtime::bundle::Slo {
            p99_ms: Some(1_000.0),
            ..digits_slo()
        },
        &fixture.key.signing,
    )
    .unwrap();
    let path = dir.join(format!("digits-{version}.perch"));
    write_file(&path, &bytes).unwrap();
    path
}

/// A small in-process fleet with traffic, reports every 250 ms.
fn small_fleet(dir: &Path, fixture: &FleetFixture, devices: usize, broker: BrokerSpec) -> Fleet {
    let mut config = FleetConfig::new(devices, &fixture.bundle, &fixture.key.public_path, dir);
    config.report_interval = Duration::from_millis(250);
    config.rate = 20.0;
    config.chunk_timeout = Duration::from_millis(500);
    config.broker = broker;
    let fleet = Fleet::start(config).unwrap();
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();
    fleet
}

/// Waits until every device of `devices` has activated the release or failed to, then
/// fails the test naming the devices that failed and why.
fn wait_activated(fleet: &Fleet, devices: &BTreeSet<String>, what: &str) {
    fleet
        .wait_until(
            &format!("{what} to activate the release"),
            PATIENCE,
            |view| {
                devices.iter().all(|id| {
                    matches!(
                        view.device(id).and_then(|d| d.state()),
                        Some(DeviceState::Active | DeviceState::Failed)
                    )
                })
            },
        )
        .unwrap();
    let failed: Vec<_> = devices
        .iter()
        .filter_map(|id| {
            let status = fleet.observer().device(id)?.rollout?;
            (status.state == DeviceState::Failed).then(|| (id.clone(), status.reason))
        })
        .collect();
    assert!(failed.is_empty(), "{what}: devices failed: {failed:?}");
}

#[test]
fn a_thousand_devices_draw_a_ten_percent_cohort_and_fifty_percent_keeps_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(1_000, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.rate = 0.0; // cohorts, not gates: no traffic needed
    config.report_interval = Duration::from_secs(2);
    let fleet = Fleet::start(config).unwrap();
    let ids = fleet.device_ids();
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();

    let release = digits_release(dir.path(), &fixture, "1.1.0", 2);
    let operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            // Stages are promoted by hand here: a soak no test waits for.
            &[
                "--stages",
                "10,50,100",
                "--soak",
                "1h",
                "--device-soak",
                "1h",
            ],
        )
        .unwrap();

    // Every device hears the document and says whether it is in the cohort.
    let reported = |view: &perch_tests::sim::FleetView| {
        ids.iter()
            .all(|id| view.device(id).is_some_and(|d| d.rollout.is_some()))
    };
    fleet
        .wait_until("every device to report on the rollout", PATIENCE, reported)
        .unwrap();
    let members = |view: &perch_tests::sim::FleetView| -> BTreeSet<String> {
        ids.iter()
            .filter(|id| {
                view.device(id)
                    .and_then(|d| d.state())
                    .is_some_and(|s| s != DeviceState::NotInCohort)
            })
            .cloned()
            .collect()
    };
    let view = fleet.view();
    let canaries = members(&view);
    // The rollout id carries random bytes, so the cohort's size is
    // Binomial(1000, 0.1): mean 100, σ ≈ 9.5. ±5σ fails once in millions of
    // runs yet still catches a hash that is off by a factor (0, 50 %, all).
    // Which devices are members is checked exactly against the hash below.
    assert!(
        (53..=147).contains(&canaries.len()),
        "the 10 % cohort of 1,000 devices has {} members",
        canaries.len()
    );
    let rollout_id = view
        .device(&ids[0])
        .unwrap()
        .rollout
        .clone()
        .unwrap()
        .rollout_id;
    assert_eq!(
        canaries,
        cohort(&ids, &rollout_id, 1_000),
        "the devices agree with the hash"
    );
    wait_activated(&fleet, &canaries, "the 10 % cohort");

    let promoted = operator.command("promote", Some("test")).unwrap();
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let expected = cohort(&ids, &rollout_id, 5_000);
    wait_activated(&fleet, &expected, "the 50 % cohort");
    let view = fleet.view();
    let half = members(&view);
    assert_eq!(half, expected);
    // Binomial(1000, 0.5): σ ≈ 15.8, so ±100 is more than 6σ.
    assert!((400..=600).contains(&half.len()), "{}", half.len());
    assert!(canaries.is_subset(&half), "promotion kept every canary");
    for id in &canaries {
        let history = &view.device(id).unwrap().history;
        assert!(
            history.iter().all(|(_, s)| *s != DeviceState::NotInCohort),
            "{id} left the cohort: {history:?}"
        );
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
    drop(operator);
    fleet.shutdown();
}

#[test]
fn a_good_model_goes_through_every_stage_to_the_whole_group_despite_an_operator_crash() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let fleet = small_fleet(dir.path(), &fixture, 20, BrokerSpec::Embedded { port: 0 });
    let ids = fleet.device_ids();
    // Two canaries at 10 %, more at 50 % but not everyone.
    let rollout_id = pick_rollout_id(&ids, "good", |size| {
        size(1_000) == 2 && (6..=14).contains(&size(5_000))
    });
    let (canaries, half) = (
        cohort(&ids, &rollout_id, 1_000),
        cohort(&ids, &rollout_id, 5_000),
    );
    let release = digits_release(dir.path(), &fixture, "1.1.0", 2);
    let mut operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            &[
                "--rollout-id",
                &rollout_id,
                "--stages",
                "10,50,100",
                "--soak",
                "2s",
                "--gate",
                "p99<100ms,error_rate<5%",
                "--min-devices",
                "2",
                "--device-soak",
                "1s",
                "--device-soak-requests",
                "10",
            ],
        )
        .unwrap();

    // Stage 1: only the canaries take the release.
    fleet
        .wait_until("the canaries to serve 1.1.0", PATIENCE, |view| {
            view.all_serving(canaries.iter().map(String::as_str), "1.1.0")
        })
        .unwrap();
    let view = fleet.view();
    for id in ids.iter().filter(|id| !half.contains(*id)) {
        assert_eq!(
            view.device(id).unwrap().version.as_deref(),
            Some("1.0.0"),
            "{id}"
        );
    }

    // The operator dies once stage 2 is under way, and resumes from its state folder.
    fleet
        .wait_until("stage 2's devices to start", PATIENCE, |view| {
            half.difference(&canaries).any(|id| {
                view.device(id)
                    .and_then(|d| d.state())
                    .is_some_and(|s| s != DeviceState::NotInCohort)
            })
        })
        .unwrap();
    operator.kill_9();
    operator.resume().unwrap();

    let status = operator.wait_exit(PATIENCE).unwrap();
    assert!(
        status.success(),
        "the rollout completed:\n{}",
        operator.log()
    );
    let report = operator.status().unwrap();
    assert_eq!(report["phase"], "completed", "{report:#}");
    fleet
        .wait_until("every device to confirm 1.1.0", PATIENCE, |view| {
            view.all_serving(ids.iter().map(String::as_str), "1.1.0")
                && ids.iter().all(|id| {
                    view.device(id).and_then(|d| d.state()) == Some(DeviceState::Confirmed)
                })
        })
        .unwrap();
    let log = report["log"].as_array().unwrap();
    let promotions = log
        .iter()
        .filter(|d| {
            d["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stage ") && m.contains("gates met"))
        })
        .count();
    assert_eq!(promotions, 2, "10 → 50 → 100: {report:#}");
    let traffic = fleet.traffic().total();
    assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{traffic:?}");
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

#[test]
fn canaries_breaching_the_error_rate_gate_abort_the_rollout_and_return_to_the_old_model() {
    error_rate_abort(None);
}

#[test]
fn on_mosquitto_too_an_error_rate_breach_aborts_and_every_canary_returns() {
    let dir = tempfile::tempdir().unwrap();
    let test = "on_mosquitto_too_an_error_rate_breach_aborts_and_every_canary_returns";
    let Some(broker) = Mosquitto::start(test, &dir.path().join("mosquitto")) else {
        return;
    };
    error_rate_abort(Some(broker.port()));
}

/// A release failing a third of its requests, on the embedded broker or on the
/// mosquitto at `mosquitto_port`.
fn error_rate_abort(mosquitto_port: Option<u16>) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let broker = match mosquitto_port {
        Some(port) => BrokerSpec::External {
            host: "127.0.0.1".into(),
            port,
        },
        None => BrokerSpec::Embedded { port: 0 },
    };
    let fleet = small_fleet(dir.path(), &fixture, 20, broker);
    let ids = fleet.device_ids();
    let rollout_id = pick_rollout_id(&ids, "bad", |size| size(1_000) == 2);
    let canaries = cohort(&ids, &rollout_id, 1_000);
    // The release fails a third of its requests on the canaries (the simulator's
    // fault profile for version 1.1.0).
    fleet.traffic().set_faults(Some(Faults {
        version: Some("1.1.0".into()),
        devices: ids.iter().cloned().collect(),
        error_fraction: 0.33,
    }));
    let release = digits_release(dir.path(), &fixture, "1.1.0", 2);
    let mut operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            &[
                "--rollout-id",
                &rollout_id,
                "--stages",
                "10,50,100",
                "--soak",
                "30s",
                "--gate",
                "p99<100ms,error_rate<5%",
                "--device-soak",
                "1h",
            ],
        )
        .unwrap();
    let status = operator.wait_exit(PATIENCE).unwrap();
    assert_eq!(status.code(), Some(1), "aborted:\n{}", operator.log());
    let report = operator.status().unwrap();
    assert_eq!(report["phase"], "aborted", "{report:#}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("error_rate"), "{reason}");
    assert_eq!(report["stage"], 1, "still the canary stage: {report:#}");

    fleet
        .wait_until("every canary to roll back to 1.0.0", PATIENCE, |view| {
            view.all_serving(canaries.iter().map(String::as_str), "1.0.0")
                && canaries.iter().all(|id| {
                    view.device(id).and_then(|d| d.state()) == Some(DeviceState::RolledBack)
                })
        })
        .unwrap();
    let view = fleet.view();
    for id in &ids {
        let device = view.device(id).unwrap();
        if canaries.contains(id) {
            assert!(
                device
                    .history
                    .iter()
                    .any(|(_, s)| *s == DeviceState::Active),
                "{id}"
            );
        } else {
            assert!(
                device
                    .history
                    .iter()
                    .all(|(_, s)| *s == DeviceState::NotInCohort),
                "{id} never left the old model: {:?}",
                device.history
            );
        }
    }
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

#[test]
fn canaries_breaching_the_p99_gate_with_a_slower_model_abort_before_the_next_stage() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let fleet = small_fleet(dir.path(), &fixture, 20, BrokerSpec::Embedded { port: 0 });
    let ids = fleet.device_ids();
    let rollout_id = pick_rollout_id(&ids, "slow", |size| size(1_000) == 2);
    let canaries = cohort(&ids, &rollout_id, 1_000);
    // A real, slower model as the next release: R4 (MobileNetV2, ~100× R1's work)
    // under its own name, with a bundle SLO loose enough to pass the device's warm-up.
    let slow = pack_bundle(
        &perch_tests::models_dir().join("mobilenetv2-035"),
        "vision",
        "2.0.0",
        2,
        &perch_runtime::bundle::Slo {
            p99_ms: Some(10_000.0),
            ..Default::default()
        },
        &fixture.key.signing,
    )
    .unwrap();
    let release = dir.path().join("vision-2.0.0.perch");
    write_file(&release, &slow).unwrap();
    fleet
        .traffic()
        .add_request(Request::from_bundle(&release).unwrap());

    // The gate sits far above R1's latency and far below R4's.
    let r1_p99 = fleet
        .view()
        .device(&ids[0])
        .unwrap()
        .latency
        .quantile(0.99)
        .unwrap();
    let limit_us = (r1_p99.as_micros() * 20).max(300);
    let gate = format!("p99<{limit_us}us");
    let mut operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            &[
                "--rollout-id",
                &rollout_id,
                "--stages",
                "10,100",
                "--soak",
                "30s",
                "--gate",
                &gate,
                "--device-soak",
                "1h",
            ],
        )
        .unwrap();
    let status = operator.wait_exit(PATIENCE).unwrap();
    assert_eq!(status.code(), Some(1), "aborted:\n{}", operator.log());
    let report = operator.status().unwrap();
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("p99"), "{reason}: {report:#}");
    fleet
        .wait_until("every canary to return to digits 1.0.0", PATIENCE, |view| {
            canaries.iter().all(|id| {
                view.device(id).and_then(|d| d.serving()).as_deref() == Some("digits 1.0.0")
                    && view.device(id).and_then(|d| d.state()) == Some(DeviceState::RolledBack)
            })
        })
        .unwrap();
    let view = fleet.view();
    assert_eq!(
        view.versions().get("1.0.0"),
        Some(&ids.len()),
        "{:?}",
        view.versions()
    );
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

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

/// Issue 15: rollout documents never expired, so a broker withholding the operator's
/// newer documents (an `aborted` one) went unnoticed.
#[test]
fn devices_that_stop_hearing_fresh_documents_freeze_say_so_and_thaw_when_the_operator_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let fleet = small_fleet(dir.path(), &fixture, 4, BrokerSpec::Embedded { port: 0 });
    let ids = fleet.device_ids();
    let release = digits_release(dir.path(), &fixture, "1.1.0", 2);
    let mut operator = fleet
        .operator(
            &release,
            &fixture.key.secret_path,
            &[
                "--stages",
                "100",
                "--soak",
                "1h",
                "--device-soak",
                "1h",
                "--fresh",
                "2s",
            ],
        )
        .unwrap();
    wait_activated(&fleet, &ids.iter().cloned().collect(), "every device");
    let frozen = |view: &perch_tests::sim::FleetView, id: &str| {
        view.device(id)
            .and_then(|d| d.rollout.as_ref())
            .map(|s| s.frozen)
    };
    // No operator, no fresh document: every device freezes and reports it.
    operator.kill_9();
    fleet
        .wait_until("every device to report frozen", PATIENCE, |view| {
            ids.iter().all(|id| frozen(view, id) == Some(true))
        })
        .unwrap();
    let view = fleet.view();
    for id in &ids {
        let report = view.device(id).and_then(|d| d.rollout.clone()).unwrap();
        assert_eq!(report.state, DeviceState::Active, "{id}: {report:?}");
        assert!(
            report
                .reason
                .unwrap_or_default()
                .contains("no fresh rollout document"),
            "{id}"
        );
    }
    // The operator comes back and renews the document: every device thaws.
    operator.resume().unwrap();
    fleet
        .wait_until("every device to thaw", PATIENCE, |view| {
            ids.iter().all(|id| frozen(view, id) == Some(false))
        })
        .unwrap();
}
