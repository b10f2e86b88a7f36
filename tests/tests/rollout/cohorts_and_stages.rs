//! Cohorts drawn by the canary hash over 1,000 devices, and a good model promoted
//! through every stage despite an operator crash.

use super::*;

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
