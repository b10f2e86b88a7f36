//! A `perchd` process killed with SIGKILL in the middle of a download resumes from its
//! last good chunk and completes, the old model serving meanwhile.

use super::*;

#[test]
fn a_device_killed_mid_download_resumes_from_its_last_good_chunk_and_completes_while_the_old_model_serves(
) {
    let dir = tempfile::tempdir().unwrap();
    let test = "a_device_killed_mid_download_resumes_from_its_last_good_chunk_and_completes_while_the_old_model_serves";
    let mosquitto = mosquitto_if_installed(test, dir.path());
    let (fixture, fleet) = small_fleet_on(dir.path(), 1, 1, mosquitto.as_ref());
    fleet.traffic().set_rate(20.0);
    let device = fleet.devices().remove(0);
    assert!(device.process);
    let id = device.id.clone();

    // The new release: models/anomaly-ae (about 1.1 MB) as `anomaly 2.0.0`, sequence 2,
    // fetched in 1 KiB chunks, each written and fsynced: over a thousand round trips.
    // No error-rate limit: the traffic driver learns of the swap from the device's next
    // metrics report, and requests shaped for digits that reach anomaly in between are
    // refused by it; with four requests an interval, one would breach any limit.
    let slo = Slo {
        p99_ms: Some(1000.0),
        ..Default::default()
    };
    let bytes = pack_bundle(
        &perch_tests::models_dir().join("anomaly-ae"),
        "anomaly",
        "2.0.0",
        2,
        &slo,
        &fixture.key.signing,
    )
    .unwrap();
    let bundle = dir.path().join("anomaly-2.0.0.perch");
    write_file(&bundle, &bytes).unwrap();
    let described = BundleRef::describe("anomaly", "2.0.0", 2, &bytes, MIN_CHUNK_SIZE);
    let chunks = described.chunk_count();
    assert!(chunks > 500, "{chunks} chunks is too few to stop half-way");
    // Once the device serves it, the driver sends it the new model's golden input.
    fleet
        .traffic()
        .add_request(Request::from_bundle(&bundle).unwrap());

    let rollout_id = "resume-after-kill";
    let old_ok_before = answered_by(&fleet, &id, OLD).0;
    let started = Instant::now();
    let _operator = fleet
        .operator(
            &bundle,
            &fixture.key.secret_path,
            &quick_rollout(rollout_id),
        )
        .unwrap();

    fleet
        .wait_until("a downloading report at 10 % or more", PATIENCE, |view| {
            view.device(&id)
                .and_then(|d| d.rollout.as_ref())
                .is_some_and(|s| {
                    s.rollout_id == rollout_id
                        && (s.state != DeviceState::Downloading
                            || s.progress_pct.is_some_and(|p| p >= 10))
                })
        })
        .unwrap();
    let status = rollout_of(&fleet, &id).unwrap();
    assert_eq!(
        status.state,
        DeviceState::Downloading,
        "the download ended before it could be interrupted: {status:?}"
    );
    // Meanwhile the old model serves, without errors.
    let at_kill = fleet.observer().device(&id).unwrap();
    assert_eq!(at_kill.version.as_deref(), Some(OLD));
    assert_eq!(status.serving, format!("digits {OLD}"));
    let to_kill = started.elapsed();
    fleet.kill_9(0).unwrap();

    // On disk: a partial download, a prefix of the bundle in whole chunks at least.
    let part = std::fs::read(device.ota_dir.join("download.part")).unwrap();
    assert!(
        !part.is_empty() && (part.len() as u64) < described.size,
        "download.part holds {} of {} bytes",
        part.len(),
        described.size
    );
    let good = (0..chunks)
        .take_while(|&i| {
            described.chunk_range(i).is_some_and(|r| {
                r.end as usize <= part.len()
                    && described.chunk_matches(i, &part[r.start as usize..r.end as usize])
            })
        })
        .count() as u32;
    assert!(
        good >= chunks / 10,
        "{good} good chunks on disk of {chunks}"
    );

    fleet.restart(0).unwrap();
    let restarted = Instant::now();
    fleet
        .wait_until(
            "the restarted device to activate anomaly 2.0.0 and report it in its metrics",
            PATIENCE,
            |view| {
                view.device(&id).is_some_and(|d| {
                    d.version.as_deref() == Some("2.0.0")
                        && d.rollout.as_ref().is_some_and(|s| {
                            matches!(s.state, DeviceState::Active | DeviceState::Confirmed)
                        })
                })
            },
        )
        .unwrap();

    eprintln!(
        "{} broker, {chunks} chunks of 1 KiB: killed {:.1}s after the start with {good} on disk; \
         active {:.1}s after the restart",
        if mosquitto.is_some() {
            "mosquitto"
        } else {
            "embedded"
        },
        to_kill.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    // It resumed where the good chunks on disk end, not from the start.
    let log = std::fs::read_to_string(device.dir.join("perchd.log")).unwrap();
    let needle = format!("rollout {rollout_id}: resuming the download at chunk ");
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let resumed: u32 = line
        .split(&needle)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk number in {line:?}"));
    assert!(resumed > 0, "{line}");
    assert_eq!(resumed, good, "{line}");
    assert!(line.ends_with(&format!("of {chunks}")), "{line}");

    let view = fleet.observer().device(&id).unwrap();
    assert_eq!(view.model.as_deref(), Some("anomaly"));
    assert_eq!(view.boot_count, Some(2));
    let states = states_of(&fleet, &id, rollout_id);
    assert_eq!(
        states.first(),
        Some(&DeviceState::Downloading),
        "{states:?}"
    );
    assert!(
        states.contains(&DeviceState::Verifying) && !states.contains(&DeviceState::Failed),
        "{states:?}"
    );
    // While it downloaded (before and after the crash) and verified, the old model
    // answered, without an error: its own reports say so, under the version that served.
    let (old_ok, old_errors) = answered_by(&fleet, &id, OLD);
    assert!(
        old_ok > old_ok_before,
        "1.0.0 answered nothing during the rollout"
    );
    assert_eq!(old_errors, 0, "1.0.0 answered with errors");
    // The new model answers its own requests right, and no more errors come (once the
    // driver has seen 2.0.0 in a report and what it sent before was answered).
    let reports = fleet.observer().device(&id).unwrap().reports;
    fleet
        .wait_until("two more metrics reports", PATIENCE, |view| {
            view.device(&id).is_some_and(|d| d.reports >= reports + 2)
        })
        .unwrap();
    let before = fleet.traffic().counts(&id);
    fleet
        .wait_until("20 more answers from anomaly 2.0.0", PATIENCE, |_| {
            fleet.traffic().counts(&id).ok >= before.ok + 20
        })
        .unwrap();
    let after = fleet.traffic().counts(&id);
    assert_eq!(after.errors, before.errors, "{after:?}");
    assert_eq!(after.wrong, 0, "{after:?}");
    assert!(answered_by(&fleet, &id, "2.0.0").0 > 0);
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

/// `(ok, errors)` in the device's metrics reports naming `version`.
fn answered_by(fleet: &Fleet, device: &str, version: &str) -> (u64, u64) {
    fleet
        .observer()
        .device(device)
        .and_then(|d| d.by_version.get(version).copied())
        .unwrap_or_default()
}
