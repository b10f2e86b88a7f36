//! Evidence and trust: minimum request counts, replayed reports, unexercised canaries,
//! document freshness and the fleet list.

use super::*;

/// A device in the current stage's cohort of `c`, reporting `state` for the rollout.
fn canary_device(c: &mut Controller, state: DeviceState) -> String {
    let id = c.state().plan.rollout_id.clone();
    let device = (0..1000)
        .map(|i| format!("pi-{i}"))
        .find(|d| c.in_cohort(d))
        .unwrap();
    assert!(c.on_status(status(&id, &device, state, 1), at(0)));
    device
}

fn published(effects: &[Effect]) -> Vec<&RolloutDocument> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishDocument(d) => Some(d),
            Effect::Log(_) => None,
        })
        .collect()
}

fn logged(effects: &[Effect]) -> String {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Log(line) => Some(line.as_str()),
            Effect::PublishDocument(_) => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_soaked_stage_whose_canary_served_too_few_requests_is_not_promoted() {
    let mut c = started("p99<10ms,error_rate<1%", 1);
    let device = canary_device(&mut c, DeviceState::Active);
    // Five fast requests meet every gate, but are no evidence.
    assert!(c.on_metrics(
        &device,
        &metrics(NEW, 5, 0, histogram(&[(1_000, 5)])),
        at(1)
    ));
    let effects = c.tick(at(SOAK_MS + 1));
    assert!(published(&effects).is_empty(), "{effects:?}");
    assert!(
        logged(&effects).contains("fewer than the 100 requests"),
        "{effects:?}"
    );
    assert_eq!(c.state().stage, 0);
    // Enough of them: promoted.
    assert!(c.on_metrics(
        &device,
        &metrics(NEW, 95, 0, histogram(&[(1_000, 95)])),
        at(2)
    ));
    let effects = c.tick(at(SOAK_MS + 2));
    assert_eq!(published(&effects)[0].percent_bp, 5_000, "{effects:?}");
}

#[test]
fn one_slow_request_past_the_soak_does_not_abort() {
    let mut c = started("p99<10ms", 1);
    let device = canary_device(&mut c, DeviceState::Active);
    assert!(c.on_metrics(
        &device,
        &metrics(NEW, 1, 0, histogram(&[(500_000, 1)])),
        at(1)
    ));
    let effects = c.tick(at(SOAK_MS + 1));
    assert_eq!(c.state().phase, Phase::Running, "{effects:?}");
}

#[test]
fn a_metrics_report_delivered_again_or_replayed_counts_once() {
    let mut c = started("p99<10ms", 1);
    let device = canary_device(&mut c, DeviceState::Active);
    let report = metrics(NEW, 20, 0, histogram(&[(1_000, 20)]));
    assert!(c.on_metrics(&device, &report, at(1)));
    for t in 2..50 {
        assert!(!c.on_metrics(&device, &report, at(t)));
    }
    let status = c.status();
    assert_eq!(status.canary.requests, 20);
    assert_eq!(status.ignored["duplicate metrics report"], 48);
    assert!(status.to_string().contains("48 duplicate metrics report"));
}

#[test]
fn metrics_of_the_new_version_from_a_device_that_never_reported_activating_it_do_not_count() {
    let mut c = started("p99<10ms", 1);
    let device = canary_device(&mut c, DeviceState::Downloading);
    for t in 1..=10 {
        let report = metrics(NEW, 20, 0, histogram(&[(1_000, 20)]));
        assert!(c.on_metrics(&device, &report, at(t)));
    }
    assert_eq!(c.status().canary.devices, 0);
    let effects = c.tick(at(SOAK_MS + 1));
    assert!(published(&effects).is_empty(), "{effects:?}");
    assert!(
        logged(&effects).contains("0 of 1 canary devices"),
        "{effects:?}"
    );
}

#[test]
fn canary_devices_reporting_unexercised_hold_a_soaked_stage_unless_the_plan_accepts_them() {
    for policy in [Unexercised::Wait, Unexercised::Accept] {
        let mut p = plan("p99<10ms", 1);
        p.unexercised = policy;
        let (mut c, _) = Controller::start(p, at(0)).unwrap();
        assert_eq!(c.document().soak_min_requests, 100);
        let busy = canary_device(&mut c, DeviceState::Confirmed);
        let id = c.state().plan.rollout_id.clone();
        let quiet = (0..1000)
            .map(|i| format!("q-{i}"))
            .find(|d| c.in_cohort(d))
            .unwrap();
        assert!(c.on_status(status(&id, &quiet, DeviceState::Unexercised, 1), at(0)));
        let report = metrics(NEW, 200, 0, histogram(&[(1_000, 200)]));
        assert!(c.on_metrics(&busy, &report, at(1)));
        let effects = c.tick(at(SOAK_MS + 1));
        match policy {
            Unexercised::Wait => {
                assert!(published(&effects).is_empty(), "{effects:?}");
                assert!(logged(&effects).contains("1 canary devices report unexercised"));
                assert!(c
                    .status()
                    .devices
                    .iter()
                    .any(|d| d.state.starts_with("unexercised")));
                // By hand, the operator decides.
                let effects = c.promote(Some("quiet devices are fine"), at(SOAK_MS + 2));
                assert_eq!(published(&effects)[0].percent_bp, 5_000);
            }
            Unexercised::Accept => {
                assert_eq!(published(&effects)[0].percent_bp, 5_000, "{effects:?}");
            }
        }
    }
}

#[test]
fn a_live_rollout_renews_its_document_every_quarter_of_its_freshness_without_logging() {
    let mut p = plan("", 1);
    p.fresh_s = 60;
    p.soak_ms = 3_600_000;
    let (mut c, effects) = Controller::start(p, at(0)).unwrap();
    let first = published(&effects)[0].clone();
    assert_eq!(first.fresh_s, 60);
    assert!(c.tick(at(14_999)).is_empty());
    let effects = c.tick(at(15_000));
    let renewed = published(&effects);
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert!(renewed[0].revision > first.revision);
    assert_eq!(
        (renewed[0].phase, renewed[0].percent_bp),
        (first.phase, first.percent_bp)
    );
    // Each revision expires, by the wall clock, `fresh_s` after it was issued.
    assert_eq!(first.expires_unix_s, WALL / 1000 + 60);
    assert_eq!(renewed[0].expires_unix_s, (WALL + 15_000) / 1000 + 60);
    let decisions = c.state().log.len();
    // Paused rollouts are renewed too; finished ones are not.
    c.pause(None, at(16_000));
    assert_eq!(published(&c.tick(at(31_000))).len(), 1);
    let effects = c.abort(None, at(32_000));
    assert_eq!(
        published(&effects)[0].expires_unix_s,
        0,
        "an abort never expires"
    );
    assert!(c.tick(at(1_000_000)).is_empty());
    assert_eq!(
        c.state().log.len(),
        decisions + 2,
        "only pause and abort logged"
    );
}

#[test]
fn a_new_rollout_revises_above_the_previous_one_whatever_the_wall_clock() {
    // The previous rollout's operator ran a clock an hour ahead of this one.
    let previous = WALL + 3_600_000;
    let (_, effects) = Controller::start_after(plan("", 1), at(0), previous).unwrap();
    assert!(published(&effects)[0].revision > previous);
}

#[test]
fn a_frozen_device_shows_in_the_status() {
    let mut c = started("", 1);
    let id = c.state().plan.rollout_id.clone();
    let pi = (0..1000)
        .map(|i| format!("pi-{i}"))
        .find(|d| c.in_cohort(d))
        .unwrap();
    let mut report = status(&id, &pi, DeviceState::Active, 1);
    report.frozen = true;
    report.reason = Some("no fresh rollout document for 601 s".into());
    assert!(c.on_status(report, at(1)));
    let state = &c.status().devices[0].state;
    assert!(state.starts_with("active (frozen: no fresh"), "{state}");
}

#[test]
fn a_made_up_device_reporting_rolled_back_cannot_abort_the_rollout() {
    let mut c = started("p99<10ms", 1);
    let mut fleet = Fleet::new();
    fleet.run(&mut c, 0, 10_000, 1_000, 0);
    let id = c.state().plan.rollout_id.clone();
    let made_up: Vec<String> = (0..1000).map(|i| format!("forged-{i}")).collect();
    let inside = made_up.iter().find(|d| c.in_cohort(d)).unwrap();
    let outside = made_up.iter().find(|d| !c.in_cohort(d)).unwrap();
    assert!(!c.on_status(status(&id, inside, DeviceState::RolledBack, 1), at(11_000)));
    assert!(!c.on_status(status(&id, outside, DeviceState::RolledBack, 1), at(11_000)));
    assert!(!c.on_status(status(&id, outside, DeviceState::Active, 2), at(11_000)));
    let effects = c.tick(at(11_001));
    assert!(published(&effects).is_empty(), "{effects:?}");
    assert_eq!(c.state().phase, Phase::Running);
    let ignored = &c.state().ignored;
    assert_eq!(
        ignored["rolled_back from a device never seen serving the bundle"],
        1
    );
    assert_eq!(ignored["cohort state from a device outside the cohort"], 2);
    assert!(!c.state().devices.contains_key(inside.as_str()));
}

#[test]
fn with_a_fleet_list_only_its_devices_report_and_a_listed_one_may_roll_back_at_once() {
    let devices: Vec<String> = (0..200).map(|i| format!("dev-{i:04}")).collect();
    let mut p = plan("p99<10ms", 1);
    p.fleet = Some(parse_fleet(&devices.join("\n")).unwrap());
    let (mut c, _) = Controller::start(p, at(0)).unwrap();
    let id = c.state().plan.rollout_id.clone();
    let stranger = (0..1000)
        .map(|i| format!("pi-{i}"))
        .find(|d| c.in_cohort(d))
        .unwrap();
    assert!(!c.on_status(status(&id, &stranger, DeviceState::Active, 1), at(1)));
    assert!(!c.on_status(status(&id, &stranger, DeviceState::RolledBack, 2), at(2)));
    assert!(c.tick(at(3)).is_empty());
    assert_eq!(
        c.state().ignored["report from a device not in the fleet list"],
        2
    );
    assert!(c
        .status()
        .to_string()
        .contains("2 report from a device not in the fleet list"));
    // A listed device's roll-back counts even when its activation was not heard.
    let listed = devices.iter().find(|d| c.in_cohort(d)).unwrap();
    assert!(c.on_status(status(&id, listed, DeviceState::RolledBack, 3), at(4)));
    assert_eq!(documents(&c.tick(at(5)))[0].phase, Phase::Aborted);
}

#[test]
fn a_fleet_list_skips_blanks_and_comments_and_refuses_what_cannot_be_a_device() {
    let fleet = parse_fleet("# kitchen\npi-1\n\n  pi-2  # by the door\npi-1\n").unwrap();
    assert_eq!(fleet.into_iter().collect::<Vec<_>>(), ["pi-1", "pi-2"]);
    let err = parse_fleet("pi-1\npi/2\n").unwrap_err();
    assert!(err.0.contains("line 2"), "{err}");
    assert!(parse_fleet("# nobody\n").is_err());
}
