//! The controller under a virtual clock: a fleet of simulated reports, real bucketing,
//! real histograms, real documents.

use super::*;
use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::BundleRef;
use perch_runtime::rollout::{DeviceState, DeviceStatus, Phase, RolloutDocument, FORMAT};
use perch_runtime::wire::{MetricsReport, ModelId, Version, FORMAT_VERSION};

const WALL: u64 = 1_790_000_000_000;
const SOAK_MS: u64 = 60_000;
const OLD: Version = Version::new(1, 2, 0);
const NEW: Version = Version::new(1, 3, 0);

fn at(ms: u64) -> Clock {
    Clock::new(ms, WALL + ms)
}

fn plan(gates: &str, min_devices: usize) -> Plan {
    Plan {
        group: "kitchen".into(),
        model: None,
        rollout_id: Plan::rollout_id("kws", "1.3.0", 8, [1, 2, 3]),
        bundle: BundleRef::describe("kws", "1.3.0", 8, &[7u8; 5000], 1024),
        stages: parse_stages("10,50,100").unwrap(),
        soak_ms: SOAK_MS,
        gates: parse_gates(gates).unwrap(),
        min_devices,
        device_soak_s: 30,
        device_soak_requests: 100,
        min_requests: MIN_REQUESTS,
        unexercised: Unexercised::Wait,
        fresh_s: 0,
        fleet: None,
    }
}

fn histogram(samples: &[(u64, u32)]) -> Histogram {
    let mut h = Histogram::new();
    for &(us, n) in samples {
        for _ in 0..n {
            h.record_ns(us * 1_000);
        }
    }
    h
}

/// A metrics report with a sequence number of its own (reports the controller has seen
/// count once).
fn metrics(version: Version, ok: u32, errors: u32, latency: Histogram) -> MetricsReport {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    MetricsReport {
        format: FORMAT_VERSION,
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        uptime_s: 100,
        interval_ms: 10_000,
        model: ModelId::new("kws", version).unwrap(),
        ok,
        errors,
        latency,
    }
}

fn status(rollout_id: &str, device: &str, state: DeviceState, update: u32) -> DeviceStatus {
    DeviceStatus {
        format: FORMAT,
        device: device.into(),
        rollout_id: rollout_id.into(),
        revision: 1,
        version: "1.3.0".into(),
        sequence: 8,
        bucket: 0,
        state,
        progress_pct: None,
        reason: (state == DeviceState::RolledBack).then(|| "p99 over SLO".into()),
        serving: "kws 1.2.0".into(),
        model: None,
        update,
        frozen: false,
    }
}

/// 200 devices; each call to `report` has every device send its state and 10 s of
/// metrics as a device following the current document would: cohort members run the
/// new version with `canary` latency (µs) and errors, the others the old one.
struct Fleet {
    devices: Vec<String>,
    updates: std::collections::HashMap<String, u32>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            devices: (0..200).map(|i| format!("dev-{i:04}")).collect(),
            updates: Default::default(),
        }
    }

    fn report(&mut self, c: &mut Controller, now: Clock, canary_us: u64, canary_errors: u32) {
        let doc = c.document();
        for d in &self.devices {
            let in_cohort = doc.in_cohort(d);
            let state = if in_cohort {
                DeviceState::Active
            } else {
                DeviceState::NotInCohort
            };
            let update = self.updates.entry(d.clone()).or_insert(0);
            let changed = c
                .state()
                .devices
                .get(d)
                .and_then(|v| v.status.as_ref())
                .is_none_or(|s| s.state != state);
            if changed {
                *update += 1;
                c.on_status(status(&doc.rollout_id, d, state, *update), now);
            }
            let report = if in_cohort {
                metrics(
                    NEW,
                    20 - canary_errors,
                    canary_errors,
                    histogram(&[(canary_us, 20 - canary_errors)]),
                )
            } else {
                metrics(OLD, 20, 0, histogram(&[(2_000, 20)]))
            };
            assert!(c.on_metrics(d, &report, now));
        }
    }

    /// Reports and ticks every 10 s from `from` to `to` (inclusive), collecting effects.
    fn run(
        &mut self,
        c: &mut Controller,
        from: u64,
        to: u64,
        canary_us: u64,
        canary_errors: u32,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut t = from;
        while t <= to {
            self.report(c, at(t), canary_us, canary_errors);
            effects.extend(c.tick(at(t)));
            t += 10_000;
        }
        effects
    }
}

fn documents(effects: &[Effect]) -> Vec<&RolloutDocument> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishDocument(d) => Some(d),
            Effect::Log(_) => None,
        })
        .collect()
}

fn started(gates: &str, min_devices: usize) -> Controller {
    let (c, effects) = Controller::start(plan(gates, min_devices), at(0)).unwrap();
    let docs = documents(&effects);
    assert_eq!(docs.len(), 1);
    assert_eq!((docs[0].phase, docs[0].percent_bp), (Phase::Running, 1_000));
    c
}

#[test]
fn gates_parse_in_every_documented_unit() {
    let gates = parse_gates("p99<10ms, error_rate<1%,throughput>1/s,p50<500us,p99.9<0.2s").unwrap();
    assert_eq!(gates.len(), 5);
    assert_eq!(gates[0].metric, Metric::Latency { quantile: 0.99 });
    assert_eq!(gates[0].limit, 10.0);
    assert_eq!(
        gates[1],
        Gate {
            metric: Metric::ErrorRate,
            limit: 0.01
        }
    );
    assert_eq!(
        gates[2],
        Gate {
            metric: Metric::Throughput,
            limit: 1.0
        }
    );
    assert_eq!(gates[3].limit, 0.5);
    assert!((gates[4].limit - 200.0).abs() < 1e-9);
    match gates[4].metric {
        Metric::Latency { quantile } => assert!((quantile - 0.999).abs() < 1e-12),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_gates("error_rate<0.05").unwrap()[0].limit, 0.05);
    let text: Vec<String> = gates.iter().map(|g| g.to_string()).collect();
    assert_eq!(
        parse_gates(&text.join(",")).unwrap(),
        gates,
        "gates print as they parse: {text:?}"
    );
    assert!(parse_gates("").unwrap().is_empty());
}

#[test]
fn bad_gates_are_refused_in_one_line_naming_the_gate() {
    for (bad, needle) in [
        ("p99", "expected METRIC<LIMIT"),
        ("p99<10", "needs a unit"),
        ("p99>10ms", "upper bound"),
        ("throughput<1/s", "lower bound"),
        ("latency<10ms", "unknown metric"),
        ("p200<1ms", "outside"),
        ("error_rate<150%", "at most 100%"),
        ("error_rate<x%", "not a non-negative number"),
        ("p99<-1ms", "not a non-negative number"),
    ] {
        let err = parse_gates(&format!("error_rate<1%,{bad}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{bad}: {err}");
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn stages_durations_and_sizes_parse_or_name_the_flag() {
    assert_eq!(
        parse_stages("10,50,100").unwrap(),
        vec![1_000, 5_000, 10_000]
    );
    assert_eq!(
        parse_stages("1, 12.5%,100").unwrap(),
        vec![100, 1_250, 10_000]
    );
    for bad in ["10,50", "50,10,100", "0,100", "10,x,100", "10,150"] {
        let err = parse_stages(bad).unwrap_err().to_string();
        assert!(err.starts_with("--stages"), "{bad}: {err}");
    }
    assert_eq!(parse_duration_ms("--soak", "10m").unwrap(), 600_000);
    assert_eq!(parse_duration_ms("--soak", "90s").unwrap(), 90_000);
    assert_eq!(parse_duration_ms("--soak", "250ms").unwrap(), 250);
    assert!(parse_duration_ms("--soak", "10 parsecs")
        .unwrap_err()
        .0
        .contains("--soak"));
    assert_eq!(parse_size("--chunk-size", "64KiB").unwrap(), 65_536);
    assert_eq!(parse_size("--chunk-size", "1MiB").unwrap(), 1_048_576);
    assert!(parse_size("--chunk-size", "64 parsecs").is_err());
}

#[test]
fn rollout_ids_are_topic_safe_and_name_the_release() {
    let id = Plan::rollout_id("kws", "1.3.0+build/7", 8, [0xab, 0xcd, 0xef]);
    assert_eq!(id, "kws-1.3.0-build-7-8-abcdef");
    perch_runtime::rollout::check_id("id", &id).unwrap();
    let long = Plan::rollout_id(&"n".repeat(32), &"1.0.0-".repeat(20), u64::MAX, [0; 3]);
    perch_runtime::rollout::check_id("id", &long).unwrap();
    assert!(long.ends_with(&format!("-{}-000000", u64::MAX)));
}

#[test]
fn merged_p99_differs_from_averaged_p99_and_the_controller_uses_the_merged_one() {
    // Device a: 100 requests at 1 ms. Device b: 98 at 1 ms and 2 at 50 ms.
    let a = histogram(&[(1_000, 100)]);
    let b = histogram(&[(1_000, 98), (50_000, 2)]);
    let ms = |h: &Histogram| h.quantile(0.99).unwrap().as_secs_f64() * 1e3;
    let averaged = (ms(&a) + ms(&b)) / 2.0;
    let mut merged = a.clone();
    merged.merge(&b);
    assert!(averaged > 10.0, "averaged p99 {averaged}");
    assert!(ms(&merged) < 10.0, "merged p99 {}", ms(&merged));

    let mut c = started("p99<10ms", 2);
    let doc = c.document();
    let cohort: Vec<String> = (0..1000)
        .map(|i| format!("dev-{i:04}"))
        .filter(|d| doc.in_cohort(d))
        .take(2)
        .collect();
    for (device, h) in cohort.iter().zip([a, b]) {
        assert!(c.on_status(
            status(&doc.rollout_id, device, DeviceState::Active, 1),
            at(1_000)
        ));
        assert!(c.on_metrics(device, &metrics(NEW, 100, 0, h), at(1_000)));
    }
    let status = c.status();
    assert_eq!(status.canary.devices, 2);
    assert_eq!(status.canary.requests, 200);
    assert!((status.canary.p99_ms.unwrap() - ms(&merged)).abs() < 1e-9);
    assert!(
        c.tick(at(SOAK_MS - 1)).is_empty(),
        "no decision before the soak"
    );
    let effects = c.tick(at(SOAK_MS));
    let docs = documents(&effects);
    assert_eq!(docs.len(), 1, "{effects:?}");
    assert_eq!((docs[0].phase, docs[0].percent_bp), (Phase::Running, 5_000));
}

#[test]
fn good_canaries_promote_through_every_stage_only_after_each_soak() {
    let mut c = started("p99<10ms,error_rate<1%,throughput>1/s", 3);
    let mut fleet = Fleet::new();
    let before = fleet.run(&mut c, 0, SOAK_MS - 10_000, 1_500, 0);
    assert!(documents(&before).is_empty(), "{before:?}");
    assert_eq!(c.state().stage, 0);

    let mut shares = Vec::new();
    let mut promoted_at = Vec::new();
    let mut t = SOAK_MS - 10_000;
    while !c.is_finished() && t < 10 * SOAK_MS {
        t += 10_000;
        let effects = fleet.run(&mut c, t, t, 1_500, 0);
        for d in documents(&effects) {
            shares.push((d.percent_bp, d.phase));
            promoted_at.push(t);
        }
    }
    assert_eq!(
        shares,
        vec![
            (5_000, Phase::Running),
            (10_000, Phase::Running),
            (10_000, Phase::Completed)
        ]
    );
    assert_eq!(promoted_at, vec![SOAK_MS, 2 * SOAK_MS, 3 * SOAK_MS]);
    let status = c.status();
    assert_eq!(status.phase, Phase::Completed);
    assert!(status.stages.iter().all(|s| s.state == "done"), "{status}");
    assert_eq!(status.devices.len(), 200);
    assert!(
        status.log.iter().any(|d| d.message.contains("p99<10ms")),
        "{status}"
    );
    assert!(
        c.tick(at(t + SOAK_MS)).is_empty(),
        "a completed rollout stays completed"
    );
}

#[test]
fn a_p99_breach_aborts_before_leaving_the_canary_stage() {
    let mut c = started("p99<10ms,error_rate<1%", 1);
    let mut fleet = Fleet::new();
    let effects = fleet.run(&mut c, 0, SOAK_MS, 30_000, 0);
    let docs = documents(&effects);
    assert_eq!(docs.len(), 1, "{effects:?}");
    assert_eq!((docs[0].phase, docs[0].percent_bp), (Phase::Aborted, 1_000));
    let s = c.state();
    assert_eq!(s.stage, 0);
    let reason = s.reason.as_deref().unwrap();
    assert!(reason.contains("p99<10ms"), "{reason}");
    assert!(reason.contains("limit 10ms"), "{reason}");
    // 30 ms falls in a bucket whose midpoint is within 12.22 % of it.
    let value: f64 = reason
        .split("canary p99 ")
        .nth(1)
        .and_then(|r| r.split("ms").next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((value - 30.0).abs() < 30.0 * 0.1222, "{reason}");
    assert!(fleet.run(&mut c, SOAK_MS, 3 * SOAK_MS, 1_000, 0).is_empty());
}

#[test]
fn an_error_rate_breach_aborts_naming_the_measured_rate() {
    let mut c = started("p99<10ms,error_rate<1%", 1);
    let mut fleet = Fleet::new();
    let effects = fleet.run(&mut c, 0, SOAK_MS, 1_000, 2);
    assert_eq!(documents(&effects).last().unwrap().phase, Phase::Aborted);
    assert_eq!(c.state().stage, 0);
    let reason = c.state().reason.as_deref().unwrap();
    assert!(
        reason.contains("gate error_rate<1% breached: canary error_rate 10%"),
        "{reason}"
    );
}

#[test]
fn too_few_canary_devices_wait_without_promotion() {
    let mut c = started("p99<10ms", 50);
    let mut fleet = Fleet::new();
    let effects = fleet.run(&mut c, 0, 5 * SOAK_MS, 1_000, 0);
    assert!(documents(&effects).is_empty(), "{effects:?}");
    assert_eq!((c.state().phase, c.state().stage), (Phase::Running, 0));
    let waits: Vec<&Decision> = c
        .state()
        .log
        .iter()
        .filter(|d| d.message.starts_with("waiting"))
        .collect();
    assert_eq!(waits.len(), 1, "a wait is logged once: {:?}", c.state().log);
    assert!(
        waits[0].message.contains("of 50 canary devices"),
        "{}",
        waits[0].message
    );
}

#[test]
fn a_rolled_back_device_aborts_the_rollout() {
    let mut c = started("p99<10ms", 1);
    let mut fleet = Fleet::new();
    fleet.run(&mut c, 0, 20_000, 1_000, 0);
    let rollout_id = c.state().plan.rollout_id.clone();
    let device = c
        .state()
        .devices
        .iter()
        .find(|(_, v)| v.bucket < 1_000)
        .map(|(d, _)| d.clone())
        .unwrap();
    assert!(c.on_status(
        status(&rollout_id, &device, DeviceState::RolledBack, 99),
        at(25_000)
    ));
    let effects = c.tick(at(25_000));
    assert_eq!(documents(&effects)[0].phase, Phase::Aborted);
    let reason = c.state().reason.clone().unwrap();
    assert!(
        reason.contains(&device) && reason.contains("p99 over SLO"),
        "{reason}"
    );
    let line = c
        .status()
        .devices
        .into_iter()
        .find(|d| d.device == device)
        .unwrap();
    assert_eq!(line.state, "rolled back: p99 over SLO");
}

#[test]
fn duplicate_older_and_foreign_status_reports_are_ignored() {
    let mut c = started("", 1);
    let id = c.state().plan.rollout_id.clone();
    let pi = (0..1000)
        .map(|i| format!("pi-{i}"))
        .find(|d| c.in_cohort(d))
        .unwrap();
    let mut downloading = status(&id, &pi, DeviceState::Downloading, 2);
    downloading.progress_pct = Some(40);
    assert!(c.on_status(downloading.clone(), at(1)));
    assert!(!c.on_status(downloading, at(2)), "duplicate");
    assert!(
        !c.on_status(status(&id, &pi, DeviceState::Pending, 1), at(3)),
        "older"
    );
    assert!(!c.on_status(
        status("other-rollout", &pi, DeviceState::RolledBack, 9),
        at(4)
    ));
    assert!(
        !c.on_status(status(&id, "a/b", DeviceState::Active, 1), at(4)),
        "not a device id"
    );
    assert!(!c.on_metrics("pi-9", &metrics(NEW, 1, 0, histogram(&[(1_000, 1)])), at(5)));
    let line = &c.status().devices[0];
    assert_eq!(
        (line.device.as_str(), line.state.as_str()),
        (pi.as_str(), "downloading 40 %")
    );
    assert!(c.tick(at(10)).is_empty());
    assert!(c.on_status(status(&id, &pi, DeviceState::Verifying, 3), at(11)));
    assert_eq!(c.status().devices[0].state, "verifying");
}

#[test]
fn the_state_survives_a_json_round_trip_mid_stage_and_continues() {
    let mut c = started("p99<10ms,error_rate<1%", 3);
    let mut fleet = Fleet::new();
    fleet.run(&mut c, 0, 30_000, 1_500, 0);
    let json = serde_json::to_string(c.state()).unwrap();
    let mut restored = Controller::from_state(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(restored, c);
    assert_eq!(restored.status().canary, c.status().canary);
    // The restarted operator continues the controller clock from the saved one.
    let resumed_at = restored.state().clock_ms;
    let effects = fleet.run(&mut restored, resumed_at + 10_000, SOAK_MS, 1_500, 0);
    let docs = documents(&effects);
    assert_eq!(docs.len(), 1, "{effects:?}");
    assert_eq!(docs[0].percent_bp, 5_000);
    assert!(docs[0].revision > c.state().revision);
}

#[test]
fn a_state_of_another_format_is_refused() {
    let c = started("", 1);
    let mut state = c.into_state();
    state.format = 99;
    assert!(Controller::from_state(state)
        .unwrap_err()
        .0
        .contains("format 99"));
}

#[test]
fn revisions_strictly_increase_even_when_the_wall_clock_goes_back() {
    let mut c = started("", 1);
    let first = c.state().revision;
    assert_eq!(first, WALL);
    let mut revisions = vec![first];
    // The wall clock jumps back a day; the controller clock moves on.
    for (i, cmd) in [
        Command::Pause,
        Command::Resume,
        Command::Promote,
        Command::Pause,
    ]
    .into_iter()
    .enumerate()
    {
        let effects = c.command(
            cmd,
            None,
            Clock::new(1_000 * (i as u64 + 1), WALL - 86_400_000),
        );
        revisions.push(documents(&effects)[0].revision);
    }
    assert!(revisions.windows(2).all(|w| w[1] > w[0]), "{revisions:?}");
    let effects = c.command(Command::Resume, None, Clock::new(10_000, WALL + 3_600_000));
    assert_eq!(documents(&effects)[0].revision, WALL + 3_600_000);
}

#[test]
fn pause_stops_promotion_and_resume_continues() {
    let mut c = started("p99<10ms", 1);
    let mut fleet = Fleet::new();
    fleet.run(&mut c, 0, 20_000, 1_000, 0);
    let effects = c.pause(Some("looking at dashboards"), at(25_000));
    assert_eq!(documents(&effects)[0].phase, Phase::Paused);
    let effects = fleet.run(&mut c, 30_000, 3 * SOAK_MS, 1_000, 0);
    assert!(documents(&effects).is_empty(), "{effects:?}");
    assert_eq!((c.state().phase, c.state().stage), (Phase::Paused, 0));
    let ignored = c.pause(None, at(3 * SOAK_MS));
    assert!(documents(&ignored).is_empty());
    assert!(matches!(&ignored[0], Effect::Log(m) if m.contains("ignored pause")));

    let effects = c.resume(None, at(3 * SOAK_MS + 1));
    assert_eq!(documents(&effects)[0].phase, Phase::Running);
    let effects = fleet.run(&mut c, 3 * SOAK_MS + 10_000, 3 * SOAK_MS + 10_000, 1_000, 0);
    assert_eq!(documents(&effects)[0].percent_bp, 5_000, "{effects:?}");
}

#[test]
fn manual_promote_and_abort_act_at_once_and_nothing_follows_an_abort() {
    let mut c = started("p99<10ms", 1);
    let effects = c.promote(Some("hotfix"), at(1));
    assert_eq!(documents(&effects)[0].percent_bp, 5_000);
    assert!(c.state().log.last().unwrap().message.contains("hotfix"));
    let effects = c.abort(None, at(2));
    assert_eq!(documents(&effects)[0].phase, Phase::Aborted);
    for cmd in [Command::Promote, Command::Resume, Command::Abort] {
        assert!(documents(&c.command(cmd, None, at(3))).is_empty());
    }
    assert_eq!(c.document().phase, Phase::Aborted);
    let text = c.status().to_string();
    assert!(text.contains("aborted by hand"), "{text}");
}

#[test]
fn many_reports_per_device_are_compacted_without_changing_the_window_figures() {
    let mut c = started("p99<10ms", 1);
    let id = c.state().plan.rollout_id.clone();
    let device = (0..1000)
        .map(|i| format!("pi-{i}"))
        .find(|d| c.in_cohort(d))
        .unwrap();
    assert!(c.on_status(status(&id, &device, DeviceState::Active, 1), at(0)));
    let mut expected = Histogram::new();
    let reports = 3 * MAX_SAMPLES_PER_DEVICE as u64;
    for i in 0..reports {
        // Alternate models so compaction must pair reports of the same one.
        let (version, us) = if i % 3 == 0 {
            (OLD, 900)
        } else {
            (NEW, 1_000 + 40 * i)
        };
        let h = histogram(&[(us, 3)]);
        if version == NEW {
            expected.merge(&h);
        }
        assert!(c.on_metrics(
            &device,
            &metrics(version, 3, u32::from(i % 7 == 0), h),
            at(i)
        ));
    }
    let view = &c.state().devices[&device];
    assert!(view.samples.len() <= MAX_SAMPLES_PER_DEVICE);
    let status = c.status();
    let new_reports = (0..reports).filter(|i| i % 3 != 0);
    assert_eq!(status.canary.ok, 3 * new_reports.clone().count() as u64);
    assert_eq!(
        status.canary.errors,
        new_reports.clone().filter(|i| i % 7 == 0).count() as u64
    );
    assert_eq!(
        status.canary.device_seconds,
        10.0 * new_reports.count() as f64
    );
    let p99 = expected.quantile(0.99).unwrap().as_secs_f64() * 1e3;
    assert_eq!(status.canary.p99_ms, Some(p99));
    assert_eq!(
        status.rest.ok,
        3 * (0..reports).filter(|i| i % 3 == 0).count() as u64
    );
}

#[test]
fn a_finished_rollout_is_settled_only_once_every_active_device_reported_its_end() {
    let mut c = started("p99<10ms", 1);
    let mut fleet = Fleet::new();
    fleet.run(&mut c, 0, 10_000, 1_000, 0);
    assert!(!c.is_settled(), "running");
    c.abort(Some("by hand"), at(11_000));
    assert!(c.is_finished());
    assert!(!c.is_settled(), "canaries still report active");
    let rollout_id = c.state().plan.rollout_id.clone();
    let active: Vec<String> = c
        .state()
        .devices
        .iter()
        .filter(|(_, v)| v.status.as_ref().map(|s| s.state) == Some(DeviceState::Active))
        .map(|(d, _)| d.clone())
        .collect();
    assert!(!active.is_empty());
    // A canary that confirmed before the abort still has to roll back.
    c.on_status(
        status(&rollout_id, &active[0], DeviceState::Confirmed, 40),
        at(11_500),
    );
    for (i, device) in active.iter().enumerate() {
        assert!(!c.is_settled());
        c.on_status(
            status(&rollout_id, device, DeviceState::RolledBack, 50),
            at(12_000 + i as u64),
        );
    }
    assert!(c.is_settled());
}

/// Issue 15: anyone who could publish on the command topic steered the rollout
/// (`promote` skipped the soak and the gates).
mod signed_commands {
    use super::operator::CommandMessage;
    use super::Command;
    use ed25519_dalek::SigningKey;

    const ROLLOUT: &str = "kws-1.3.0-8-abc";

    fn fleet_key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn promote(revision: u64) -> CommandMessage {
        CommandMessage {
            command: Command::Promote,
            reason: Some("test".into()),
            rollout_id: ROLLOUT.into(),
            revision,
        }
    }

    fn accept(payload: &[u8], revision: u64) -> Result<CommandMessage, String> {
        CommandMessage::accept(payload, &fleet_key().verifying_key(), ROLLOUT, revision)
    }

    #[test]
    fn a_command_signed_with_the_fleet_key_for_the_latest_document_is_accepted() {
        let signed = promote(41).sign(&fleet_key());
        assert_eq!(accept(&signed, 41).unwrap(), promote(41));
    }

    #[test]
    fn unsigned_forged_foreign_and_replayed_commands_are_refused_saying_why() {
        let unsigned = br#"{"command":"promote"}"#.to_vec();
        let other_key = promote(41).sign(&SigningKey::from_bytes(&[4; 32]));
        // The fleet key's id on another key's signature.
        let mut forged: serde_json::Value =
            serde_json::from_slice(&promote(41).sign(&fleet_key())).unwrap();
        let tampered = forged["command"]
            .as_str()
            .unwrap()
            .replace("promote", "abort");
        forged["command"] = tampered.into();
        let forged = serde_json::to_vec(&forged).unwrap();
        let mut elsewhere = promote(41);
        elsewhere.rollout_id = "other-rollout".into();
        let elsewhere = elsewhere.sign(&fleet_key());
        // Signed for revision 41; the controller has published 42 since (the command
        // itself took effect, say): the same bytes again are a replay.
        let replayed = promote(41).sign(&fleet_key());
        let cases: [(&[u8], u64, &str); 6] = [
            (&unsigned, 41, "unsigned or malformed"),
            (&other_key, 41, "signed by key"),
            (&forged, 41, "does not verify"),
            (&elsewhere, 41, "for rollout other-rollout"),
            (
                &replayed,
                42,
                "stale promote command (for revision 41, the latest is 42)",
            ),
            (&vec![b' '; 5000], 41, "5000-byte command"),
        ];
        for (payload, revision, why) in cases {
            let err = accept(payload, revision).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}

/// Evidence and trust: minimum request counts, replayed reports, unexercised canaries,
/// document freshness and the fleet list.
mod evidence;

#[test]
fn a_rollout_of_one_model_publishes_documents_naming_it_and_keeps_files_of_its_own() {
    let mut p = plan("", 1);
    p.model = Some("iris".into());
    let err = Controller::start(p.clone(), at(0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("--model iris: the bundle holds model \"kws\""),
        "{err}"
    );
    p.bundle = BundleRef::describe("iris", "1.3.0", 8, &[7u8; 5000], 1024);
    let (controller, _) = Controller::start(p, at(0)).unwrap();
    assert_eq!(controller.document().model.as_deref(), Some("iris"));
    let primary = Controller::start(plan("", 1), at(0)).unwrap().0;
    let json = serde_json::to_string(&primary.document()).unwrap();
    assert!(
        !json.contains("\"model\""),
        "a primary rollout's document as before: {json}"
    );

    let dir = std::path::Path::new("/var/lib/perch/rollouts");
    let store = super::store::Store::of_model(dir, "kitchen", Some("iris")).unwrap();
    assert_eq!(store.state_path(), dir.join("kitchen+iris.json"));
    assert_eq!(store.bundle_path(), dir.join("kitchen+iris.perch"));
    let store = super::store::Store::new(dir, "kitchen").unwrap();
    assert_eq!(store.state_path(), dir.join("kitchen.json"));
    assert!(super::store::Store::of_model(dir, "kitchen", Some("../x")).is_err());
}
