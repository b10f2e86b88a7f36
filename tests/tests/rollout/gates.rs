//! Canaries breaching the error-rate or the p99 gate abort the rollout, and every
//! canary returns to the old model.

use super::*;

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
