//! A 1,000-device in-process fleet: start time, memory per device and CPU per device.
//!
//! A file of its own so that this test is the only one in its process: its memory
//! figure is the process's resident set, which another test's fleet would swell.

use std::time::{Duration, Instant};

use perch_tests::sim::{cpu_time, Fleet, FleetConfig, FleetFixture};

/// Long enough for a slow, shared CI machine; waits end as soon as their condition
/// holds.
const PATIENCE: Duration = Duration::from_secs(90);

#[test]
fn a_thousand_in_process_devices_start_connect_and_report_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = FleetFixture::digits(dir.path()).unwrap();
    let mut config = FleetConfig::new(1000, &fixture.bundle, &fixture.key.public_path, dir.path());
    config.report_interval = Duration::from_secs(1);
    config.warmup_runs = 1;
    let started = Instant::now();
    let fleet = Fleet::start(config).unwrap();
    fleet
        .wait_all_reporting("1.0.0", Duration::from_secs(300))
        .unwrap();
    let start_time = started.elapsed();
    let (rss, baseline) = fleet.rss_kib();
    let per_device_kib = rss
        .zip(baseline)
        .map(|(rss, base)| f64::from(rss.saturating_sub(base)) / 1000.0);

    // Steady state with one request per device per second: CPU per device.
    fleet.traffic().set_rate(1.0);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let sent0 = fleet.traffic().total().ok;
    fleet
        .wait_until("3000 more answered requests", PATIENCE, |_| {
            fleet.traffic().total().ok >= sent0 + 3000
        })
        .unwrap();
    let (cpu1, wall) = (cpu_time(), t0.elapsed());
    let cores = cpu0
        .zip(cpu1)
        .map(|(a, b)| (b - a).as_secs_f64() / wall.as_secs_f64());
    eprintln!(
        "1000 devices: all reporting {:.1}s after start; RSS {} MiB ({} MiB before the devices, \
         {} KiB per device); at 1 request/device/s and 1 report/device/s: {} cores busy, \
         {} devices per core",
        start_time.as_secs_f64(),
        rss.map_or("?".into(), |r| format!("{:.0}", f64::from(r) / 1024.0)),
        baseline.map_or("?".into(), |r| format!("{:.0}", f64::from(r) / 1024.0)),
        per_device_kib.map_or("?".into(), |k| format!("{k:.0}")),
        cores.map_or("?".into(), |c| format!("{c:.2}")),
        cores.map_or("?".into(), |c| format!("{:.0}", 1000.0 / c.max(1e-3))),
    );
    let view = fleet.view();
    assert_eq!(view.online(), 1000);
    assert_eq!(view.versions().get("1.0.0"), Some(&1000));
    let total = fleet.traffic().total();
    assert_eq!((total.errors, total.wrong), (0, 0), "{total:?}");
    assert!(fleet.failures().is_empty(), "{:?}", fleet.failures());
    // Comfortably: well under 1 MiB each is the aim; 4 MiB is the line.
    if let Some(kib) = per_device_kib {
        assert!(kib < 4096.0, "{kib:.0} KiB per device");
    }
}
