//! The fleet simulator with the real agent: in-process fleets on the embedded broker,
//! and `perchd` processes killed with SIGKILL (the 1,000-device fleet has a file of its
//! own, `thousand.rs`, so that it measures a process of its own).
//!
//! The process tests build `perchd` when it is missing or stale
//! (`perch_testkit::workspace_binary`). The mosquitto test is skipped, saying so, when
//! mosquitto is not installed, unless `PERCH_REQUIRE_MOSQUITTO=1` (CI), which makes
//! that a failure.

use std::path::Path;
use std::time::Duration;

use perch_firmware::spool::Spool;
use perch_runtime::wire::MetricsReport;
use perch_testkit::{wait_until, Mosquitto};
use perch_tests::sim::{BrokerSpec, Faults, Fleet, FleetConfig, FleetFixture, SeqSet};

/// Long enough for a slow, shared CI machine; waits end as soon as their condition
/// holds.
const PATIENCE: Duration = Duration::from_secs(90);

fn seqs(fleet: &Fleet, device: &str) -> SeqSet {
    fleet
        .observer()
        .device(device)
        .map(|d| d.seqs)
        .unwrap_or_default()
}

#[test]
fn twenty_in_process_devices_connect_serve_traffic_and_report_the_initial_version() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(20, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.report_interval = Duration::from_millis(250);
    config.rate = 10.0;
    let fleet = Fleet::start(config).unwrap();
    let ids = fleet.device_ids();
    assert_eq!(ids.len(), 20);
    assert_eq!(
        (ids[0].as_str(), ids[19].as_str()),
        ("sim-0000", "sim-0019")
    );

    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();
    // Every device answers the driver's requests and counts them in its own reports.
    fleet
        .wait_until(
            "every device's reports to count 5 answered requests",
            PATIENCE,
            |view| {
                ids.iter()
                    .all(|id| view.device(id).is_some_and(|d| d.ok >= 5))
            },
        )
        .unwrap();

    let view = fleet.view();
    for id in &ids {
        let device = view.device(id).unwrap();
        assert_eq!(device.model.as_deref(), Some("digits"), "{id}");
        assert_eq!(device.boot_count, Some(1), "{id}");
        assert_eq!(device.errors, 0, "{id}");
        let traffic = fleet.traffic().counts(id);
        assert!(traffic.ok >= 5, "{id}: {traffic:?}");
        assert_eq!((traffic.errors, traffic.wrong), (0, 0), "{id}: {traffic:?}");
    }
    assert_eq!(view.versions().get("1.0.0"), Some(&20));
    assert!(view.malformed.is_empty(), "{:?}", view.malformed);
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
    let summary = fleet.summary();
    assert_eq!((summary.online, summary.running), (20, 20));
    fleet.shutdown();
}

#[test]
fn injected_faults_reach_only_the_chosen_devices_metrics_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(4, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.report_interval = Duration::from_millis(200);
    config.rate = 20.0;
    let fleet = Fleet::start(config).unwrap();
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();
    let ids = fleet.device_ids();
    fleet.traffic().set_faults(Some(Faults {
        version: Some("1.0.0".into()),
        devices: [ids[1].clone()].into(),
        error_fraction: 0.5,
    }));
    fleet
        .wait_until(
            "10 errors in the faulty device's reports",
            PATIENCE,
            |view| view.device(&ids[1]).is_some_and(|d| d.errors >= 10),
        )
        .unwrap();
    fleet.traffic().set_faults(None);

    let view = fleet.view();
    for (i, id) in ids.iter().enumerate() {
        let (device, traffic) = (view.device(id).unwrap(), fleet.traffic().counts(id));
        if i == 1 {
            assert!(traffic.injected >= 10, "{traffic:?}");
            assert!(device.ok > 0, "half its requests still succeed");
        } else {
            assert_eq!(
                (device.errors, traffic.injected, traffic.errors),
                (0, 0, 0),
                "{id}"
            );
        }
    }
}

#[test]
fn a_process_device_killed_with_sigkill_restarts_with_its_folder_and_its_report_sequence_continues()
{
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(2, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.processes = 1;
    config.report_interval = Duration::from_millis(100);
    config.rate = 5.0;
    let fleet = Fleet::start(config).unwrap();
    let id = fleet.device_ids()[0].clone();
    assert!(fleet.devices()[0].process && !fleet.devices()[1].process);
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();
    fleet
        .wait_until("5 reports from the process device", PATIENCE, |view| {
            view.device(&id).is_some_and(|d| d.reports >= 5)
        })
        .unwrap();

    fleet.kill_9(0).unwrap();
    assert!(!fleet.is_running(0));
    // The broker publishes its last will.
    fleet
        .wait_until("the killed device's last will", PATIENCE, |view| {
            view.device(&id).is_some_and(|d| !d.online)
        })
        .unwrap();
    let before = seqs(&fleet, &id);
    let last_before = before.last().unwrap();
    // Reports delivered while it ran: none missing.
    assert_eq!(before.ranges(), &[(0, last_before)]);

    fleet.restart(0).unwrap();
    fleet
        .wait_until(
            "the restarted device online, reporting again",
            PATIENCE,
            |view| {
                view.device(&id).is_some_and(|d| {
                    d.online && d.boot_count == Some(2) && d.seqs.count_from(last_before + 1) >= 3
                })
            },
        )
        .unwrap();
    let after = seqs(&fleet, &id);
    // Sequence numbers continue across the crash (a jump, never a repeat).
    assert!(before.iter().all(|s| after.contains(s)));
    let device = fleet.observer().device(&id).unwrap();
    assert_eq!(device.duplicate_reports, 0, "a sequence number came twice");
    assert_eq!(device.version.as_deref(), Some("1.0.0"));
    assert!(fleet.traffic().counts(&id).ok > 0);
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

/// The sequence numbers of the reports in a spool folder, read from a copy of it (a
/// spool is drained as it is read).
fn spooled_seqs(spool: &Path, scratch: &Path) -> Vec<u32> {
    std::fs::create_dir_all(scratch).unwrap();
    for entry in std::fs::read_dir(spool).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), scratch.join(entry.file_name())).unwrap();
    }
    let mut copy = Spool::open(scratch, 1_000_000, 1 << 30).unwrap();
    let mut seqs = Vec::new();
    while let Some((id, bytes)) = copy.peek().unwrap() {
        seqs.push(MetricsReport::decode(&bytes).unwrap().seq);
        copy.remove(id).unwrap();
    }
    seqs
}

#[test]
fn against_mosquitto_reports_spooled_before_a_sigkill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let test = "against_mosquitto_reports_spooled_before_a_sigkill_are_delivered_after_the_restart";
    let Some(mut broker) = Mosquitto::start(test, &dir.path().join("mosquitto")) else {
        return;
    };
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(1, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.processes = 1;
    config.report_interval = Duration::from_millis(100);
    config.broker = BrokerSpec::External {
        host: "127.0.0.1".into(),
        port: broker.port(),
    };
    let fleet = Fleet::start(config).unwrap();
    let device = fleet.devices().remove(0);
    fleet.wait_all_reporting("1.0.0", PATIENCE).unwrap();

    // The broker goes away: reports pile up in the device's spool on disk.
    broker.stop();
    fleet
        .wait_until("the observer to lose the broker", PATIENCE, |_| {
            !fleet.observer().is_subscribed()
        })
        .unwrap();
    let records = || {
        std::fs::read_dir(&device.spool_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rec"))
            })
            .count()
    };
    wait_until("reports spooled", PATIENCE, || records() >= 5);
    fleet.kill_9(0).unwrap();
    let spooled = spooled_seqs(&device.spool_dir, &dir.path().join("spool-copy"));
    assert!(spooled.len() >= 5, "{spooled:?}");
    assert!(
        spooled.windows(2).all(|w| w[0] < w[1]),
        "spooled in order: {spooled:?}"
    );
    let last_spooled = *spooled.last().unwrap();
    let delivered_before = seqs(&fleet, &device.id);
    assert!(spooled
        .iter()
        .all(|&s| !delivered_before.contains(s) || s == spooled[0]));

    broker.restart();
    fleet
        .wait_until("the observer to subscribe again", PATIENCE, |_| {
            fleet.observer().is_subscribed()
        })
        .unwrap();
    fleet.restart(0).unwrap();
    fleet
        .wait_until("every spooled report, then new ones", PATIENCE, |view| {
            view.device(&device.id).is_some_and(|d| {
                spooled.iter().all(|&s| d.seqs.contains(s))
                    && d.seqs.count_from(last_spooled + 1) >= 3
            })
        })
        .unwrap();
    let all = seqs(&fleet, &device.id);
    // From the first spooled report on, nothing is missing up to the crash.
    let first = spooled[0];
    assert!((first..=last_spooled).all(|s| all.contains(s)), "{all:?}");
    assert_eq!(
        fleet.observer().device(&device.id).unwrap().boot_count,
        Some(2)
    );
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
}

#[test]
fn perch_sim_runs_a_small_fleet_prints_json_lines_and_reuses_its_work_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_perch-sim"))
            .args([
                "--devices",
                "3",
                "--broker",
                "embedded",
                "--for",
                "1s",
                "--json",
            ])
            .args(["--report-interval", "200ms", "--rate", "5/s", "--work-dir"])
            .arg(dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        let header: serde_json::Value =
            serde_json::from_str(stderr.lines().next().unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (header, lines)
    };
    let (header, lines) = run();
    assert!(header["broker"]
        .as_str()
        .unwrap()
        .starts_with("mqtt://127.0.0.1:"));
    let bundle = Path::new(header["bundle"].as_str().unwrap());
    assert!(bundle.starts_with(dir.path()) && bundle.is_file());
    let last = lines.last().unwrap();
    assert_eq!(last["devices"], 3);
    assert_eq!(last["online"], 3, "{last}");
    assert_eq!(last["versions"]["1.0.0"], 3, "{last}");
    assert_eq!(last["failed"], 0);
    assert!(last["traffic"]["ok"].as_u64().unwrap() > 0, "{last}");

    // A second run in the same folder keeps the key and bundle, and the devices' state.
    let key = std::fs::read(dir.path().join("fleet.pub")).unwrap();
    let (header, lines) = run();
    assert_eq!(header["bundle"].as_str().unwrap(), bundle.to_str().unwrap());
    assert_eq!(std::fs::read(dir.path().join("fleet.pub")).unwrap(), key);
    assert_eq!(lines.last().unwrap()["online"], 3);
    let state =
        std::fs::read_to_string(dir.path().join("devices/sim-0000/spool/agent.state")).unwrap();
    assert!(state.contains("boot_count=2"), "{state}");
}
