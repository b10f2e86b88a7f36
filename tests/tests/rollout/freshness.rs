//! Devices that stop hearing fresh documents freeze, say so, and thaw.

use super::*;

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
